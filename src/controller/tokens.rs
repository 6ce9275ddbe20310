//! Bearer tokens for the controller's API, from a mounted Secret (one token per line), read
//! again whenever its content changes so that a rotated Secret takes effect without a restart.
//!
//! A change is noticed by content, not by modification time and length: a rotation with
//! `cp -p`, `rsync -t` or `touch -r` keeps both. A file that disappears stops every request
//! once a short grace has passed: a Secret being swapped is missing for a moment only, and a
//! token that was revoked by deleting the file must not go on working.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// How often the file is read again at most: a request costs no read of its own when many
/// come at once, and a change is still seen within this.
const RECHECK: Duration = Duration::from_millis(250);
/// Far more than any list of tokens; a larger file is a wrong path.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot read the tokens file {path}: {source}\n  hint: --tokens names a file with one bearer token per line (a mounted Secret)")]
pub struct Unreadable {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    /// How long the tokens read last still count after the file can no longer be read.
    grace: Duration,
    cached: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    /// When the file was last read, and what it looked like then.
    checked: Option<Instant>,
    stamp: Option<Stamp>,
    /// The content the tokens were parsed from.
    content: Vec<u8>,
    tokens: Vec<Vec<u8>>,
    /// Since when, and why, the file cannot be read.
    missing: Option<(Instant, String)>,
}

impl Tokens {
    /// Reads the file once, so that a missing or empty one stops the server at start.
    pub fn load(path: &Path, grace: Duration) -> Result<Self, Unreadable> {
        let tokens = Tokens {
            path: path.to_path_buf(),
            grace,
            cached: Mutex::new(Cached::default()),
        };
        let content = tokens.read()?;
        let count = tokens.cached().update(content);
        if count == 0 {
            return Err(Unreadable {
                path: path.to_path_buf(),
                source: std::io::Error::other("it holds no token"),
            });
        }
        if let Some(warning) = tokens.writable_by_others() {
            tracing::warn!("{warning}");
        }
        Ok(tokens)
    }

    /// Whether `candidate` is one of the tokens. Every token is compared, each in constant
    /// time, so the answer's timing says nothing about how much of a token was right.
    pub fn accepts(&self, candidate: &str) -> bool {
        let cached = self.refresh();
        if cached
            .missing
            .as_ref()
            .is_some_and(|(since, _)| since.elapsed() >= self.grace)
        {
            return false;
        }
        let mut found = subtle::Choice::from(0);
        for token in &cached.tokens {
            found |= token.as_slice().ct_eq(candidate.as_bytes());
        }
        bool::from(found) && !candidate.is_empty()
    }

    /// What keeps the tokens from working as they should, for `/readyz`.
    pub fn problems(&self) -> Vec<String> {
        let cached = self.refresh();
        let Some((since, why)) = &cached.missing else {
            return Vec::new();
        };
        let left = self.grace.saturating_sub(since.elapsed());
        let effect = if left.is_zero() {
            "every request is refused until it is back".to_string()
        } else {
            format!(
                "the tokens read before are accepted for {}s more, then every request is refused",
                left.as_secs_f64().ceil()
            )
        };
        vec![format!(
            "the tokens file {} cannot be read ({why}): {effect}",
            self.path.display()
        )]
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cache, after reading the file again if it looks changed (another inode, change
    /// or modification time, or length) or the last read is older than [`RECHECK`]: the
    /// stamp sees most changes at once, the content every one.
    fn refresh(&self) -> std::sync::MutexGuard<'_, Cached> {
        let mut cached = self.cached();
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m));
        let fresh = cached.checked.is_some_and(|at| at.elapsed() < RECHECK);
        if fresh && stamp.is_some() && stamp == cached.stamp {
            return cached;
        }
        cached.checked = Some(Instant::now());
        cached.stamp = stamp;
        match self.read() {
            Ok(content) => {
                if cached.missing.take().is_some() {
                    tracing::info!("the tokens file {} is back", self.path.display());
                }
                if content != cached.content {
                    cached.update(content);
                    tracing::info!(
                        "the tokens file {} changed: read again",
                        self.path.display()
                    );
                    if let Some(warning) = self.writable_by_others() {
                        tracing::warn!("{warning}");
                    }
                }
            }
            Err(e) => {
                if cached.missing.is_none() {
                    tracing::warn!(
                        "{e}; the tokens read before are refused after {}s",
                        self.grace.as_secs_f64()
                    );
                    cached.missing = Some((Instant::now(), e.source.to_string()));
                }
            }
        }
        cached
    }

    fn read(&self) -> Result<Vec<u8>, Unreadable> {
        let unreadable = |source| Unreadable {
            path: self.path.clone(),
            source,
        };
        let file = std::fs::File::open(&self.path).map_err(unreadable)?;
        let mut content = Vec::new();
        file.take(MAX_FILE)
            .read_to_end(&mut content)
            .map_err(unreadable)?;
        Ok(content)
    }

    /// A warning when users other than the owner may write the file: they could add a token.
    fn writable_by_others(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&self.path).ok()?.permissions().mode();
        (mode & 0o022 != 0).then(|| {
            format!(
                "the tokens file {} is writable by its group or others (mode {:o}): they can add a token of their own; chmod go-w it",
                self.path.display(),
                mode & 0o777
            )
        })
    }
}

/// What a file's metadata says of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
    len: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            len: meta.len(),
        }
    }
}

impl Cached {
    /// Parses `content` into the tokens; returns how many it holds.
    fn update(&mut self, content: Vec<u8>) -> usize {
        let text = String::from_utf8_lossy(&content);
        // Editors on some systems start a file with a byte order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        self.tokens = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        self.content = content;
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    /// Waits out the re-check interval and forgets the stamp, so that only the content
    /// can tell whether the file changed.
    fn expire(tokens: &Tokens) {
        let mut cached = tokens.cached();
        cached.checked = None;
        cached.stamp = None;
    }

    #[test]
    fn tokens_are_read_again_when_the_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# operators\nfirst-token\n\n").unwrap();
        let tokens = Tokens::load(&path, GRACE).unwrap();
        assert!(tokens.accepts("first-token"));
        assert!(!tokens.accepts("first-toke"));
        assert!(!tokens.accepts(""));
        assert!(!tokens.accepts("# operators"));
        std::fs::write(&path, "second-token-rotated\n").unwrap();
        expire(&tokens);
        assert!(tokens.accepts("second-token-rotated"));
        assert!(!tokens.accepts("first-token"));

        // Same length, same modification time: only the content says it changed.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "third--token-rotated\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        expire(&tokens);
        assert!(tokens.accepts("third--token-rotated"));
        assert!(!tokens.accepts("second-token-rotated"));
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "\u{feff}bom-token\r\nsecond\r\n").unwrap();
        let tokens = Tokens::load(&path, GRACE).unwrap();
        assert!(tokens.accepts("bom-token"));
        assert!(tokens.accepts("second"));
    }

    #[test]
    fn a_deleted_file_stops_every_token_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "kept-token\n").unwrap();
        let tokens = Tokens::load(&path, GRACE).unwrap();
        assert!(tokens.problems().is_empty());
        std::fs::remove_file(&path).unwrap();
        expire(&tokens);
        assert!(tokens.accepts("kept-token"), "within the grace");
        let problems = tokens.problems();
        assert!(
            problems[0].contains("accepted for 30s more"),
            "{problems:?}"
        );
        // The grace ends.
        tokens.cached().missing.as_mut().unwrap().0 -= GRACE;
        assert!(!tokens.accepts("kept-token"));
        let problems = tokens.problems();
        assert!(
            problems[0].contains("every request is refused"),
            "{problems:?}"
        );
        // Back: its tokens work again.
        std::fs::write(&path, "kept-token\n").unwrap();
        expire(&tokens);
        assert!(tokens.accepts("kept-token"));
        assert!(tokens.problems().is_empty());
    }

    #[test]
    fn a_file_others_can_write_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "t0ken\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tokens = Tokens::load(&path, GRACE).unwrap();
        assert_eq!(tokens.writable_by_others(), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let warning = tokens.writable_by_others().unwrap();
        assert!(warning.contains("mode 666"), "{warning}");
    }

    #[test]
    fn an_empty_tokens_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "\n# none yet\n").unwrap();
        assert!(Tokens::load(&path, GRACE).is_err());
        assert!(Tokens::load(&dir.path().join("missing"), GRACE).is_err());
    }
}
