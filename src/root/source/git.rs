//! Cloning with libgit2: one branch, tag or commit of a repository, checked out into a fresh
//! directory. Credentials are offered only when the server asks, and only once each: a
//! second request for the same kind means the server refused them.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use git2::{
    build::CheckoutBuilder, AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction,
    ErrorClass, ErrorCode, FetchOptions, Oid, RemoteCallbacks, Repository,
};

use super::credentials::{fingerprint, known_host, Credentials, GitUrl, Scheme};

/// How long a connection may take to open; an unreachable host fails after this.
const CONNECT_TIMEOUT_MS: i32 = 30_000;
/// How long the server may stay silent mid-transfer.
const IO_TIMEOUT_MS: i32 = 300_000;

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloned {
    pub commit: String,
    /// What the ref turned out to be, as the log says it: `branch main`, `tag v1`, ...
    pub resolved: String,
}

/// Why a clone failed, sorted by who can fix it. Messages never hold the URL's userinfo:
/// libgit2 only ever sees the URL without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The ref is not in the repository; `known` lists some that are.
    UnknownRef { wanted: String, known: Vec<String> },
    /// No repository at the URL.
    NotFound(String),
    /// The server wanted credentials and refused (or was not given) them.
    AuthRefused(String),
    /// The server's TLS certificate or ssh host key is not trusted.
    Untrusted(String),
    /// The host could not be reached, or the transfer broke off.
    Unreachable(String),
    /// Anything else: the PVC, a broken repository.
    Other(String),
}

/// What the ref names, once the server said which refs it has.
enum Target {
    Branch(String),
    Tag(String),
    /// Any other full ref name, like `refs/pull/1/head`.
    Ref(String),
    /// A commit id, full or abbreviated, looked for in every branch and tag.
    Commit(String),
}

/// Where the commit is once fetched.
enum Found {
    Ref(String),
    Commit(String),
}

/// Clones `url` at `wanted` (the remote's default branch when `None`) into `into`, which
/// must not exist yet. The remote `origin` is left pointing at the URL without credentials.
pub fn clone(
    url: &GitUrl,
    wanted: Option<&str>,
    creds: &Credentials,
    into: &Path,
) -> Result<Cloned, Failure> {
    set_timeouts();
    let auth = Auth {
        url,
        creds,
        served: RefCell::new(Vec::new()),
        refused: RefCell::new(None),
        untrusted: RefCell::new(None),
    };
    let other = |e: git2::Error| Failure::Other(e.message().to_string());
    let repo = Repository::init(into).map_err(other)?;
    let mut remote = repo.remote("origin", &url.plain).map_err(other)?;

    let (advertised, default_branch) = {
        let connection = remote
            .connect_auth(Direction::Fetch, Some(auth.callbacks()), None)
            .map_err(|e| auth.classify(e, true))?;
        let heads = connection
            .list()
            .map_err(|e| auth.classify(e, true))?
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect::<Vec<_>>();
        let default = connection
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().ok().map(str::to_string));
        (heads, default)
    };
    auth.served.borrow_mut().clear();

    let target = resolve(wanted, &advertised, default_branch.as_deref())?;
    // Only what the ref needs is fetched; a commit id may be in any branch or tag.
    let (refspecs, found_at) = match &target {
        Target::Branch(name) => (
            vec![format!("+refs/heads/{name}:refs/remotes/origin/{name}")],
            Found::Ref(format!("refs/remotes/origin/{name}")),
        ),
        Target::Tag(name) => (
            vec![format!("+refs/tags/{name}:refs/tags/{name}")],
            Found::Ref(format!("refs/tags/{name}")),
        ),
        Target::Ref(full) => (vec![format!("+{full}:{full}")], Found::Ref(full.clone())),
        Target::Commit(id) => (
            vec![
                "+refs/heads/*:refs/remotes/origin/*".to_string(),
                "+refs/tags/*:refs/tags/*".to_string(),
            ],
            Found::Commit(id.clone()),
        ),
    };
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(auth.callbacks())
        .download_tags(AutotagOption::None);
    remote
        .fetch(&refspecs, Some(&mut options), None)
        .map_err(|e| auth.classify(e, false))?;

    let commit = match found_at {
        Found::Ref(local) => repo
            .find_reference(&local)
            .and_then(|r| r.peel_to_commit())
            .map_err(other)?,
        Found::Commit(id) => find_commit(&repo, &id).ok_or_else(|| Failure::UnknownRef {
            wanted: id,
            known: known_refs(&advertised),
        })?,
    };
    repo.checkout_tree(commit.as_object(), Some(CheckoutBuilder::new().force()))
        .map_err(other)?;
    let resolved = match &target {
        Target::Branch(name) => {
            let mut branch = repo.branch(name, &commit, true).map_err(other)?;
            branch
                .set_upstream(Some(&format!("origin/{name}")))
                .map_err(other)?;
            repo.set_head(&format!("refs/heads/{name}"))
                .map_err(other)?;
            format!("branch {name}")
        }
        Target::Tag(name) => format!("tag {name}"),
        Target::Ref(full) => format!("ref {full}"),
        Target::Commit(_) => "commit".to_string(),
    };
    if !matches!(target, Target::Branch(_)) {
        repo.set_head_detached(commit.id()).map_err(other)?;
    }
    Ok(Cloned {
        commit: commit.id().to_string(),
        resolved,
    })
}

fn resolve(
    wanted: Option<&str>,
    advertised: &[(String, Oid)],
    default_branch: Option<&str>,
) -> Result<Target, Failure> {
    let has = |name: &str| advertised.iter().any(|(n, _)| n == name);
    let unknown = |wanted: &str| Failure::UnknownRef {
        wanted: wanted.to_string(),
        known: known_refs(advertised),
    };
    let wanted = match wanted.map(str::trim) {
        None | Some("") | Some("HEAD") => {
            return match default_branch.and_then(|b| b.strip_prefix("refs/heads/")) {
                Some(branch) if has(&format!("refs/heads/{branch}")) => {
                    Ok(Target::Branch(branch.to_string()))
                }
                _ => Err(unknown("HEAD (the default branch)")),
            };
        }
        Some(wanted) => wanted,
    };
    if let Some(branch) = wanted.strip_prefix("refs/heads/").filter(|_| has(wanted)) {
        return Ok(Target::Branch(branch.to_string()));
    }
    if let Some(tag) = wanted.strip_prefix("refs/tags/").filter(|_| has(wanted)) {
        return Ok(Target::Tag(tag.to_string()));
    }
    if wanted.starts_with("refs/") && has(wanted) {
        return Ok(Target::Ref(wanted.to_string()));
    }
    if has(&format!("refs/heads/{wanted}")) {
        return Ok(Target::Branch(wanted.to_string()));
    }
    if has(&format!("refs/tags/{wanted}")) {
        return Ok(Target::Tag(wanted.to_string()));
    }
    let hex =
        wanted.len() >= 4 && wanted.len() <= 40 && wanted.chars().all(|c| c.is_ascii_hexdigit());
    if hex {
        return Ok(Target::Commit(wanted.to_ascii_lowercase()));
    }
    Err(unknown(wanted))
}

/// The commit `id` (full or a unique prefix) names, if it was fetched.
fn find_commit<'r>(repo: &'r Repository, id: &str) -> Option<git2::Commit<'r>> {
    let object = repo.revparse_single(id).ok()?;
    object
        .id()
        .to_string()
        .starts_with(id)
        .then(|| object.peel_to_commit().ok())
        .flatten()
}

/// Branch and tag names the server has, for the error that says the ref is not there.
fn known_refs(advertised: &[(String, Oid)]) -> Vec<String> {
    let mut names: Vec<String> = advertised
        .iter()
        .filter_map(|(name, _)| {
            name.strip_prefix("refs/heads/")
                .or_else(|| name.strip_prefix("refs/tags/"))
                .filter(|n| !n.ends_with("^{}"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// libgit2 waits for the operating system's connect timeout otherwise, minutes long.
fn set_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: these set global options, done once before any connection is opened.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(CONNECT_TIMEOUT_MS);
            let _ = git2::opts::set_server_timeout_in_milliseconds(IO_TIMEOUT_MS);
        }
    });
}

/// Answers the server's requests for credentials and its host key, remembering what went
/// wrong so the error can say it.
struct Auth<'a> {
    url: &'a GitUrl,
    creds: &'a Credentials,
    served: RefCell<Vec<CredentialType>>,
    refused: RefCell<Option<String>>,
    untrusted: RefCell<Option<String>>,
}

impl<'a> Auth<'a> {
    fn callbacks(&'a self) -> RemoteCallbacks<'a> {
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |_, user, allowed| self.credential(user, allowed));
        callbacks.certificate_check(move |cert, host| Ok(self.check_certificate(cert, host)));
        // Returning false aborts the transfer: a pod being stopped must not wait for a clone.
        callbacks.transfer_progress(|_| crate::base::signals::stop_requested().is_none());
        callbacks
    }

    fn credential(
        &self,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        let kind = [
            CredentialType::SSH_KEY,
            CredentialType::USER_PASS_PLAINTEXT,
            CredentialType::USERNAME,
        ]
        .into_iter()
        .find(|k| allowed.contains(*k));
        let Some(kind) = kind else {
            return Err(self.refuse(format!(
                "the server asks for a kind of credentials this bootstrapper cannot give ({allowed:?})"
            )));
        };
        if self.served.borrow().contains(&kind) {
            let what = match kind {
                CredentialType::SSH_KEY => self
                    .creds
                    .ssh_key
                    .as_ref()
                    .map(|_| format!("the key in {}", super::credentials::SSH_KEY))
                    .unwrap_or_else(|| "the ssh agent's keys".into()),
                _ => match self.creds.userpass(self.url) {
                    Some((_, secret)) => format!("the credentials from {}", secret.from),
                    None => "the credentials".into(),
                },
            };
            return Err(self.refuse(format!("the server refused {what}")));
        }
        self.served.borrow_mut().push(kind);
        if kind == CredentialType::USERNAME {
            return Cred::username(&self.creds.ssh_user(user_from_url));
        }
        if kind == CredentialType::SSH_KEY {
            let user = self.creds.ssh_user(user_from_url);
            if let Some(key) = &self.creds.ssh_key {
                let public = PathBuf::from(format!("{}.pub", key.display()));
                let passphrase = self.creds.ssh_passphrase.as_ref().map(|s| s.value.as_str());
                return Cred::ssh_key(
                    &user,
                    public.is_file().then_some(public.as_path()),
                    key,
                    passphrase,
                );
            }
            if std::env::var_os("SSH_AUTH_SOCK").is_some() {
                return Cred::ssh_key_from_agent(&user);
            }
            if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                return Err(self.refuse(format!(
                    "the server asks for an ssh key and none is set ({} is not set)",
                    super::credentials::SSH_KEY
                )));
            }
        }
        match self.creds.userpass(self.url) {
            Some((user, secret)) => Cred::userpass_plaintext(&user, &secret.value),
            None => {
                Err(self
                    .refuse("the server asks for a user name and password, and none is set".into()))
            }
        }
    }

    fn refuse(&self, why: String) -> git2::Error {
        *self.refused.borrow_mut() = Some(why.clone());
        git2::Error::new(ErrorCode::Auth, ErrorClass::Callback, why)
    }

    /// libgit2 checks TLS certificates and ~/.ssh/known_hosts itself; an ssh host key may
    /// also be vouched for by the known_hosts file the environment names.
    fn check_certificate(&self, cert: &git2::cert::Cert<'_>, host: &str) -> CertificateCheckStatus {
        let Some(hostkey) = cert.as_hostkey() else {
            return CertificateCheckStatus::CertificatePassthrough;
        };
        let (Some(key), Some(kind)) = (hostkey.hostkey(), hostkey.hostkey_type()) else {
            return CertificateCheckStatus::CertificatePassthrough;
        };
        if let Some(file) = &self.creds.known_hosts {
            if let Ok(true) = known_host(file, host, kind.name(), key) {
                return CertificateCheckStatus::CertificateOk;
            }
        }
        *self.untrusted.borrow_mut() = Some(format!(
            "the ssh host key of {host} ({} {}) is not in ~/.ssh/known_hosts{}",
            kind.name(),
            fingerprint(key),
            match &self.creds.known_hosts {
                Some(_) => format!(
                    " nor in the file {} names",
                    super::credentials::SSH_KNOWN_HOSTS
                ),
                None => String::new(),
            }
        ));
        CertificateCheckStatus::CertificatePassthrough
    }

    /// Sorts a failure; `connecting` tells whether the server was still being reached (later,
    /// an error of the operating system is more likely this side's, like a full PVC).
    fn classify(&self, e: git2::Error, connecting: bool) -> Failure {
        if let Some(why) = self.refused.borrow().clone() {
            return Failure::AuthRefused(why);
        }
        let message = e.message().to_string();
        let local = self.url.scheme == Scheme::Local;
        match (e.code(), e.class()) {
            (ErrorCode::Auth, _) => Failure::AuthRefused(message),
            (ErrorCode::Certificate, _) => {
                Failure::Untrusted(self.untrusted.borrow().clone().unwrap_or(message))
            }
            // On the local filesystem, failing to open the repository means it is not there.
            (_, ErrorClass::Os | ErrorClass::Repository | ErrorClass::Net)
                if local && connecting =>
            {
                Failure::NotFound(message)
            }
            (_, ErrorClass::Http) if message.contains("401") || message.contains("403") => {
                Failure::AuthRefused(message)
            }
            (_, ErrorClass::Http) if message.contains("404") => Failure::NotFound(message),
            (_, ErrorClass::Net | ErrorClass::Ssl | ErrorClass::Ssh | ErrorClass::Http)
                if !local =>
            {
                Failure::Unreachable(message)
            }
            (_, ErrorClass::Os) if connecting && !local => Failure::Unreachable(message),
            _ => Failure::Other(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[&str]) -> Vec<(String, Oid)> {
        names
            .iter()
            .map(|n| (n.to_string(), Oid::ZERO_SHA1))
            .collect()
    }

    #[test]
    fn a_ref_resolves_to_a_branch_a_tag_or_a_commit() {
        let advertised = refs(&["HEAD", "refs/heads/main", "refs/tags/v1", "refs/tags/v1^{}"]);
        let default = Some("refs/heads/main");
        assert!(
            matches!(resolve(None, &advertised, default), Ok(Target::Branch(b)) if b == "main")
        );
        assert!(matches!(
            resolve(Some("main"), &advertised, default),
            Ok(Target::Branch(_))
        ));
        assert!(
            matches!(resolve(Some("v1"), &advertised, default), Ok(Target::Tag(t)) if t == "v1")
        );
        assert!(matches!(
            resolve(Some("refs/tags/v1"), &advertised, default),
            Ok(Target::Tag(_))
        ));
        assert!(
            matches!(resolve(Some("ABCDEF12"), &advertised, default), Ok(Target::Commit(c)) if c == "abcdef12")
        );
        match resolve(Some("nope"), &advertised, default) {
            Err(Failure::UnknownRef { wanted, known }) => {
                assert_eq!(wanted, "nope");
                assert_eq!(known, ["main", "v1"]);
            }
            _ => panic!("`nope` must be unknown"),
        }
    }
}
