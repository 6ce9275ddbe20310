//! Bearer tokens for the controller's API, from a mounted Secret (one token per line), read
//! again whenever the file changes so that a rotated Secret takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use subtle::ConstantTimeEq;

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
    cached: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    /// Modification time and length of the file the tokens were read from.
    stamp: Option<(SystemTime, u64)>,
    tokens: Vec<Vec<u8>>,
}

impl Tokens {
    /// Reads the file once, so that a missing or empty one stops the server at start.
    pub fn load(path: &Path) -> Result<Self, Unreadable> {
        let tokens = Tokens {
            path: path.to_path_buf(),
            cached: Mutex::new(Cached::default()),
        };
        let count = tokens.refresh()?;
        if count == 0 {
            return Err(Unreadable {
                path: path.to_path_buf(),
                source: std::io::Error::other("it holds no token"),
            });
        }
        Ok(tokens)
    }

    /// Whether `candidate` is one of the tokens. Every token is compared, each in constant
    /// time, so the answer's timing says nothing about how much of a token was right.
    pub fn accepts(&self, candidate: &str) -> bool {
        if let Err(e) = self.refresh() {
            // A Secret being swapped can be missing for a moment: keep the tokens we had.
            tracing::warn!("{e}");
        }
        let cached = self.cached.lock().expect("tokens lock");
        let mut found = subtle::Choice::from(0);
        for token in &cached.tokens {
            found |= token.as_slice().ct_eq(candidate.as_bytes());
        }
        bool::from(found) && !candidate.is_empty()
    }

    /// Reads the file again if it changed; returns how many tokens it holds.
    fn refresh(&self) -> Result<usize, Unreadable> {
        let unreadable = |source| Unreadable {
            path: self.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(unreadable)?;
        let stamp = (meta.modified().map_err(unreadable)?, meta.len());
        let mut cached = self.cached.lock().expect("tokens lock");
        if cached.stamp != Some(stamp) {
            let text = std::fs::read_to_string(&self.path).map_err(unreadable)?;
            cached.tokens = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.as_bytes().to_vec())
                .collect();
            cached.stamp = Some(stamp);
        }
        Ok(cached.tokens.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_again_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# operators\nfirst-token\n\n").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert!(tokens.accepts("first-token"));
        assert!(!tokens.accepts("first-toke"));
        assert!(!tokens.accepts(""));
        assert!(!tokens.accepts("# operators"));
        std::fs::write(&path, "second-token-rotated\n").unwrap();
        assert!(tokens.accepts("second-token-rotated"));
        assert!(!tokens.accepts("first-token"));
    }

    #[test]
    fn an_empty_tokens_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "\n# none yet\n").unwrap();
        assert!(Tokens::load(&path).is_err());
        assert!(Tokens::load(&dir.path().join("missing")).is_err());
    }
}
