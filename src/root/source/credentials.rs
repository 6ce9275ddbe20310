//! What a clone authenticates with: the userinfo of the URL, or credentials from the
//! environment and from mounted secret files. None of it is ever shown or stored: the URL
//! handed to git and kept on the PVC has no password in it, and every secret value is given
//! to the [`Redactor`] before the first connection.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::base::error::{Problem, Problems};
use crate::base::secrets::Redactor;

/// A token for https, sent as the password (GitHub, GitLab, Gitea and Bitbucket accept that).
pub const TOKEN: &str = "BOOTSTRAPPER_GIT_TOKEN";
/// The user name for https (default [`TOKEN_USER`]), or for ssh when the URL has none.
pub const USERNAME: &str = "BOOTSTRAPPER_GIT_USERNAME";
/// A password for https; wins over a token when both are set.
pub const PASSWORD: &str = "BOOTSTRAPPER_GIT_PASSWORD";
/// The path of a private key for ssh (an OpenSSH key file, e.g. a mounted Secret).
pub const SSH_KEY: &str = "BOOTSTRAPPER_GIT_SSH_KEY";
pub const SSH_PASSPHRASE: &str = "BOOTSTRAPPER_GIT_SSH_PASSPHRASE";
/// A known_hosts file the server's host key is checked against, besides ~/.ssh/known_hosts.
pub const SSH_KNOWN_HOSTS: &str = "BOOTSTRAPPER_GIT_SSH_KNOWN_HOSTS";
/// Appended to the name of a secret variable, names a file holding the value instead, as a
/// Kubernetes Secret mounted as a volume provides it (`BOOTSTRAPPER_GIT_TOKEN_FILE`, ...).
pub const FILE_SUFFIX: &str = "_FILE";

/// The user name sent with a token when none is set.
const TOKEN_USER: &str = "x-access-token";
/// The user name for ssh when neither the URL nor the environment has one.
const SSH_USER: &str = "git";

/// A secret and where it came from, so an error can name the source without the value.
#[derive(Clone)]
pub struct Secret {
    pub value: String,
    pub from: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(from {})", self.from)
    }
}

/// Credentials set in the environment.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub ssh_key: Option<PathBuf>,
    pub ssh_passphrase: Option<Secret>,
    pub known_hosts: Option<PathBuf>,
}

impl Credentials {
    /// Reads the variables through `var` (the process environment, or a test's), and the
    /// files they name; a file that cannot be read is a problem, named by its variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, Problems> {
        let mut problems = Problems::default();
        let mut secret = |name: &str| match lookup(&var, name) {
            Ok(found) => found,
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        let username = secret(USERNAME).map(|s| s.value);
        let password = secret(PASSWORD);
        let token = secret(TOKEN);
        let ssh_passphrase = secret(SSH_PASSPHRASE);
        let path = |name: &str| {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        };
        let ssh_key = path(SSH_KEY);
        let known_hosts = path(SSH_KNOWN_HOSTS);
        for (name, file) in [(SSH_KEY, &ssh_key), (SSH_KNOWN_HOSTS, &known_hosts)] {
            if let Some(file) = file.as_ref().filter(|f| !f.is_file()) {
                problems.push(
                    Problem::new(format!(
                        "{name} names {}, which is not a readable file",
                        file.display()
                    ))
                    .hint(format!("mount the file there, or unset {name}")),
                );
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Credentials {
            username,
            password,
            token,
            ssh_key,
            ssh_passphrase,
            known_hosts,
        })
    }

    /// Masks every secret value from here on, wherever the engine prints or keeps text.
    pub fn register(&self, redactor: &Redactor) {
        for secret in [&self.password, &self.token, &self.ssh_passphrase]
            .into_iter()
            .flatten()
        {
            redactor.add(&secret.value);
        }
    }

    /// The user name and password for https: the URL's own, else the environment's.
    pub fn userpass(&self, url: &GitUrl) -> Option<(String, Secret)> {
        let env_secret = self.password.clone().or_else(|| self.token.clone());
        match (&url.username, &url.password) {
            (Some(user), Some(password)) => Some((
                user.clone(),
                Secret {
                    value: password.clone(),
                    from: "the URL".into(),
                },
            )),
            // `https://TOKEN@host/...`: a token in the user's place, with no password.
            (Some(user), None) => Some((
                user.clone(),
                env_secret.unwrap_or_else(|| Secret {
                    value: String::new(),
                    from: "the URL".into(),
                }),
            )),
            (None, _) => env_secret.map(|secret| {
                let user = self.username.clone().unwrap_or_else(|| TOKEN_USER.into());
                (user, secret)
            }),
        }
    }

    /// The user name for ssh.
    pub fn ssh_user(&self, from_url: Option<&str>) -> String {
        from_url
            .map(str::to_string)
            .or_else(|| self.username.clone())
            .unwrap_or_else(|| SSH_USER.into())
    }
}

/// `NAME`, or else the content of the file `NAME_FILE` names, without its final newline.
fn lookup(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<Secret>, Problem> {
    if let Some(value) = var(name).filter(|v| !v.is_empty()) {
        return Ok(Some(Secret {
            value,
            from: name.to_string(),
        }));
    }
    let file_var = format!("{name}{FILE_SUFFIX}");
    let Some(path) = var(&file_var).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let text = fs::read_to_string(&path).map_err(|e| {
        // The path is not shown: the redactor masks every value of a variable named like a
        // secret, so it would read as asterisks anyway; the variable's name says enough.
        Problem::new(format!("cannot read the file that {file_var} names: {e}")).hint(format!(
            "mount the secret at the path {file_var} gives, or unset it"
        ))
    })?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        return Ok(None);
    }
    Ok(Some(Secret {
        value,
        from: file_var,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Ssh,
    /// file:// and plain paths: on this machine's filesystem, no credentials.
    Local,
    /// git:// and anything else libgit2 knows: no credentials.
    Other,
}

/// A repository URL taken apart, so that its credentials never reach libgit2's messages, the
/// clone's `.git/config`, or the journal.
#[derive(Clone, PartialEq, Eq)]
pub struct GitUrl {
    /// The URL without password (for ssh, the user name stays: it is no secret).
    pub plain: String,
    /// The URL as written, its userinfo masked: what every message shows.
    pub shown: String,
    pub scheme: Scheme,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for GitUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitUrl({})", self.shown)
    }
}

impl GitUrl {
    pub fn parse(url: &str) -> Self {
        let url = url.trim();
        let shown = crate::base::secrets::mask_url_userinfo(url.into()).into_owned();
        let Some((scheme, rest)) = url.split_once("://") else {
            // `user@host:path`, ssh's short form, or a local path.
            let scheme = match url.split_once(':') {
                Some((host, _)) if !host.contains('/') => Scheme::Ssh,
                _ => Scheme::Local,
            };
            let username = (scheme == Scheme::Ssh)
                .then(|| url.split_once('@').map(|(user, _)| user.to_string()))
                .flatten();
            return GitUrl {
                plain: url.to_string(),
                shown,
                scheme,
                username,
                password: None,
            };
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => Scheme::Http,
            "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
            "file" => Scheme::Local,
            _ => Scheme::Other,
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let Some(at) = authority.rfind('@') else {
            return GitUrl {
                plain: url.to_string(),
                shown,
                scheme: kind,
                username: None,
                password: None,
            };
        };
        let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (percent_decode(u), Some(percent_decode(p))),
            None => (percent_decode(userinfo), None),
        };
        let user = (!user.is_empty()).then_some(user);
        let plain = match (kind, &user) {
            (Scheme::Ssh, Some(_)) => {
                format!(
                    "{scheme}://{}@{host}{path}",
                    &userinfo[..userinfo.find(':').unwrap_or(userinfo.len())]
                )
            }
            _ => format!("{scheme}://{host}{path}"),
        };
        GitUrl {
            plain,
            shown,
            scheme: kind,
            username: user,
            password,
        }
    }

    /// Masks the URL's secrets: its password, and a user name that stands for a token (one
    /// with no password in the URL nor in the environment, as in `https://TOKEN@host/...`).
    pub fn register(&self, creds: &Credentials, redactor: &Redactor) {
        if let Some(password) = &self.password {
            redactor.add(password);
        }
        let env_secret = creds.password.is_some() || creds.token.is_some();
        if self.scheme == Scheme::Http && self.password.is_none() && !env_secret {
            if let Some(user) = &self.username {
                redactor.add(user);
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `known_hosts` (OpenSSH's format) lists `key` of type `key_type` for `host`.
/// Hashed host names (`ssh-keyscan -H`) are not matched: list hosts in plain text.
pub fn known_host(
    known_hosts: &Path,
    host: &str,
    key_type: &str,
    key: &[u8],
) -> std::io::Result<bool> {
    let text = fs::read_to_string(known_hosts)?;
    let key = base64(key);
    let mut known = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or("");
        let revoked = first == "@revoked";
        if first.starts_with('@') {
            if !revoked {
                continue; // @cert-authority: certificates are not checked here.
            }
            first = fields.next().unwrap_or("");
        }
        let (Some(kind), Some(entry_key)) = (fields.next(), fields.next()) else {
            continue;
        };
        let host_listed = first.split(',').any(|pattern| {
            let name = pattern
                .strip_prefix('[')
                .and_then(|p| p.split_once("]:").map(|(h, _)| h))
                .unwrap_or(pattern);
            name.eq_ignore_ascii_case(host)
        });
        if host_listed && kind == key_type && entry_key == key {
            if revoked {
                return Ok(false);
            }
            known = true;
        }
    }
    Ok(known)
}

/// `SHA256:…`, as `ssh-keygen -l` shows a host key, for the operator to compare.
pub fn fingerprint(key: &[u8]) -> String {
    let hash = Sha256::digest(key);
    format!("SHA256:{}", base64(&hash).trim_end_matches('='))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_url_loses_its_credentials_but_ssh_keeps_its_user() {
        let url = GitUrl::parse("https://bob:p%40ss@git.example:8443/org/repo.git");
        assert_eq!(url.plain, "https://git.example:8443/org/repo.git");
        assert_eq!(url.shown, "https://********@git.example:8443/org/repo.git");
        assert_eq!(url.scheme, Scheme::Http);
        assert_eq!(url.username.as_deref(), Some("bob"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));

        let url = GitUrl::parse("ssh://git:oops@git.example/org/repo.git");
        assert_eq!(url.plain, "ssh://git@git.example/org/repo.git");
        assert_eq!(url.scheme, Scheme::Ssh);
        assert_eq!(url.shown, "ssh://********@git.example/org/repo.git");

        let url = GitUrl::parse("git@git.example:org/repo.git");
        assert_eq!(
            (url.scheme, url.username.as_deref()),
            (Scheme::Ssh, Some("git"))
        );
        assert_eq!(GitUrl::parse("/srv/repo.git").scheme, Scheme::Local);
        assert_eq!(GitUrl::parse("git://127.0.0.1/r.git").scheme, Scheme::Other);
        assert_eq!(
            GitUrl::parse("file:///srv/repo.git").plain,
            "file:///srv/repo.git"
        );
    }

    #[test]
    fn a_user_name_standing_for_a_token_is_masked() {
        let url = GitUrl::parse("https://tok-in-user-place@git.example/r.git");
        assert_eq!(url.plain, "https://git.example/r.git");
        let redactor = Redactor::default();
        url.register(&Credentials::default(), &redactor);
        assert_eq!(redactor.mask("x tok-in-user-place"), "x ********");

        let url = GitUrl::parse("https://alice@git.example/r.git");
        let creds = Credentials::from_env(env(&[(PASSWORD, "pw-123456")])).unwrap();
        let redactor = Redactor::default();
        url.register(&creds, &redactor);
        creds.register(&redactor);
        assert_eq!(redactor.mask("alice pw-123456"), "alice ********");
    }

    #[test]
    fn the_urls_credentials_win_and_a_token_gets_a_user_name() {
        let creds = Credentials::from_env(env(&[(TOKEN, "tok-123456")])).unwrap();
        let plain = GitUrl::parse("https://git.example/r.git");
        let (user, secret) = creds.userpass(&plain).unwrap();
        assert_eq!(
            (user.as_str(), secret.value.as_str()),
            (TOKEN_USER, "tok-123456")
        );
        assert_eq!(secret.from, TOKEN);
        let (user, secret) = creds
            .userpass(&GitUrl::parse("https://u:pw-in-url@git.example/r.git"))
            .unwrap();
        assert_eq!((user.as_str(), secret.value.as_str()), ("u", "pw-in-url"));
        assert!(Credentials::default().userpass(&plain).is_none());
    }

    #[test]
    fn secrets_come_from_files_and_a_missing_file_is_named_by_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        fs::write(&file, "from-a-file\n").unwrap();
        let path = file.to_str().unwrap();
        let creds = Credentials::from_env(env(&[
            (USERNAME, "alice"),
            ("BOOTSTRAPPER_GIT_PASSWORD_FILE", path),
        ]))
        .unwrap();
        let secret = creds.password.clone().unwrap();
        assert_eq!(secret.value, "from-a-file");
        assert_eq!(secret.from, "BOOTSTRAPPER_GIT_PASSWORD_FILE");
        let redactor = Redactor::default();
        creds.register(&redactor);
        assert_eq!(redactor.mask("x from-a-file y"), "x ******** y");

        let err = Credentials::from_env(env(&[("BOOTSTRAPPER_GIT_TOKEN_FILE", "/nonexistent/t")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("BOOTSTRAPPER_GIT_TOKEN_FILE"),
            "{err}"
        );
    }

    #[test]
    fn host_keys_are_matched_by_host_type_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let key = b"\x00\x00\x00\x0bssh-ed25519 not really a key";
        fs::write(
            &file,
            format!(
                "# comment\nother.example ssh-ed25519 AAAA\n[git.example]:2222,alias ssh-ed25519 {}\n",
                base64(key)
            ),
        )
        .unwrap();
        assert!(known_host(&file, "git.example", "ssh-ed25519", key).unwrap());
        assert!(known_host(&file, "alias", "ssh-ed25519", key).unwrap());
        assert!(!known_host(&file, "other.example", "ssh-ed25519", key).unwrap());
        assert!(!known_host(&file, "git.example", "ssh-rsa", key).unwrap());
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
