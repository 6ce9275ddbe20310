//! Room on the PVC. Terraform that runs out of space mid-apply cannot save its state: the
//! resources it created are then recorded nowhere. So no terraform that writes state starts
//! while the root's filesystem has less than `settings.min_free_space` free.

use std::path::Path;

use crate::base::error::{Error, Result};

/// The default `settings.min_free_space`: a state of a few thousand resources, twice over.
pub const DEFAULT_MIN_FREE: u64 = 64 * MIB;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Fails, naming the figures, when the filesystem of `path` has less than `min` bytes free.
pub fn ensure_room(path: &Path, min: u64) -> Result<()> {
    if min == 0 {
        return Ok(());
    }
    let free = free_space(path).map_err(|e| {
        Error::io(
            format!("cannot tell how much space is free at {}", path.display()),
            e,
        )
    })?;
    if free < min {
        return Err(Error::NoSpace {
            path: path.to_path_buf(),
            free,
            min,
        });
    }
    Ok(())
}

/// Parses a size: bytes, or a number with a unit (`k`/`KiB`, `M`/`MiB`, `G`/`GiB`, all
/// powers of 1024), e.g. `64MiB`, `512k`, `0` (no check).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 64MiB, 512KiB or 1GiB)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit (use KiB, MiB or GiB)"
            ))
        }
    };
    Ok((n * factor as f64) as u64)
}

/// A size for people: `1.5 MiB`, `812 KiB`, `20 bytes`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB => format!("{:.0} KiB", b as f64 / KIB as f64),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("64MiB"), Ok(64 * MIB));
        assert_eq!(parse_size("512k"), Ok(512 * KIB));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(human(3 * MIB / 2), "1.5 MiB");
        assert_eq!(human(20), "20 bytes");
    }

    #[test]
    fn a_filesystem_with_less_than_the_minimum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_room(dir.path(), 1).is_ok());
        assert!(ensure_room(dir.path(), 0).is_ok());
        let err = ensure_room(dir.path(), u64::MAX).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("min_free_space"), "{err}");
    }
}
