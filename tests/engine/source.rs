//! The code put on the PVC: copied from the image or cloned with git (over file://, git://
//! and http), atomically, with its identity in every step's inputs, and never a credential
//! in what the engine prints or keeps. Real git, real terraform.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;

// ---------------------------------------------------------------------------
// Fixtures: a one-step workflow over a tiny terraform module whose resource writes its
// version to the ledger when created and destroyed.

/// A module with only `terraform_data`: local state, no providers, works offline.
fn module(version: &str) -> String {
    format!(
        r#"variable "ledger" {{
  type = string
}}

resource "terraform_data" "app" {{
  triggers_replace = "{version}"
  input            = {{ ledger = var.ledger, version = "{version}" }}

  provisioner "local-exec" {{
    command     = "echo \"create app $VERSION\" >> \"$LEDGER\""
    environment = {{ LEDGER = var.ledger, VERSION = "{version}" }}
  }}

  provisioner "local-exec" {{
    when        = destroy
    command     = "echo \"destroy app $VERSION\" >> \"$LEDGER\""
    environment = {{ LEDGER = self.input.ledger, VERSION = self.input.version }}
  }}
}}

output "version" {{
  value = "{version}"
}}
"#
    )
}

/// Writes the workflow with the given `[source]` body and its vars template and params.
fn setup(b: &Bootstrapper, source: &str) {
    let template = b.dir().join("app.tfvars.tera");
    fs::write(&template, "ledger = \"{{ params.ledger }}\"\n").unwrap();
    b.write_workflow(&format!(
        "[source]\ndir = \"code\"\n{source}\n\n[settings]\nretries = 0\n\n\
         [[step]]\nname = \"app\"\ndir = \"app\"\nvars = {}\n",
        toml_string(&template.display().to_string())
    ));
    b.write_params(&json!({ "ledger": b.ledger_path() }));
}

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn code_identity(b: &Bootstrapper) -> String {
    let status = status_json(b);
    status["code"]["identity"]
        .as_str()
        .unwrap_or_else(|| panic!("no code identity in {status:#}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// Git fixtures, built with the git command line.

/// Runs git in `dir` with no user or system configuration, and returns its stdout.
#[track_caller]
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .stdin(Stdio::null())
        .output()
        .expect("run git (is it installed?)");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository and the work tree that pushes to it.
struct Repo {
    work: PathBuf,
    bare: PathBuf,
}

impl Repo {
    /// `main`: commit "one", then "two" (annotated tag `v2`); `dev`: "dev", from "one".
    /// Every commit holds the module at `app/`, an executable script and a symlink.
    fn new(base: &Path) -> Repo {
        let work = base.join("work");
        let bare = base.join("repos/infra.git");
        fs::create_dir_all(work.join("app")).unwrap();
        fs::create_dir_all(work.join("scripts")).unwrap();
        fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "--bare", "-q", "-b", "main"]);
        git(&work, &["init", "-q", "-b", "main"]);
        let script = work.join("scripts/hello.sh");
        write_script(&script, "#!/bin/sh\necho hello\n");
        symlink("app", work.join("current")).unwrap();
        let repo = Repo { work, bare };
        repo.commit("one");
        git(
            &repo.work,
            &["remote", "add", "origin", repo.bare.to_str().unwrap()],
        );
        git(&repo.work, &["push", "-q", "origin", "main"]);
        repo
    }

    fn with_history(base: &Path) -> Repo {
        let repo = Repo::new(base);
        git(&repo.work, &["checkout", "-q", "-b", "dev"]);
        repo.commit("dev");
        git(&repo.work, &["checkout", "-q", "main"]);
        repo.commit("two");
        git(&repo.work, &["tag", "-a", "v2", "-m", "release two"]);
        git(
            &repo.work,
            &["push", "-q", "origin", "main", "dev", "refs/tags/v2"],
        );
        repo
    }

    /// Commits the module at `version` on the current branch; returns the commit id.
    fn commit(&self, version: &str) -> String {
        fs::write(self.work.join("app/main.tf"), module(version)).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", version]);
        self.id("HEAD")
    }

    fn push(&self) {
        git(&self.work, &["push", "-q", "origin", "HEAD"]);
    }

    /// The commit a revision names.
    fn id(&self, rev: &str) -> String {
        git(&self.work, &["rev-parse", &format!("{rev}^{{commit}}")])
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }
}

/// `git daemon` serving a directory on a free loopback port, killed when dropped.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path, log: &Path) -> GitDaemon {
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("start git daemon");
        let daemon = GitDaemon { child, port };
        wait_for(
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            Duration::from_secs(20),
        );
        daemon
    }

    fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Trees compared entry by entry: kind, permission bits, content, link target.

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Link { target: PathBuf },
}

fn tree(root: &Path, skip: &dyn Fn(&Path) -> bool) -> BTreeMap<PathBuf, Entry> {
    fn walk(
        dir: &Path,
        rel: &Path,
        skip: &dyn Fn(&Path) -> bool,
        out: &mut BTreeMap<PathBuf, Entry>,
    ) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if skip(&rel) {
                continue;
            }
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path()).unwrap();
                out.insert(rel, Entry::Link { target });
            } else if meta.is_dir() {
                out.insert(rel.clone(), Entry::Dir { mode });
                walk(&entry.path(), &rel, skip, out);
            } else {
                let content = fs::read(entry.path()).unwrap();
                out.insert(rel, Entry::File { mode, content });
            }
        }
    }
    let mut out = BTreeMap::new();
    let mode = fs::metadata(root).unwrap().permissions().mode() & 0o7777;
    out.insert(PathBuf::from("."), Entry::Dir { mode });
    walk(root, Path::new(""), skip, &mut out);
    out
}

/// What running the `app` step adds to its directory.
fn step_byproduct(rel: &Path) -> bool {
    let mut parts = rel.iter();
    parts.next() == Some("app".as_ref())
        && parts.next().is_some_and(|name| {
            [
                ".terraform",
                ".terraform.lock.hcl",
                "terraform.tfstate",
                "terraform.tfstate.backup",
                "terraform.tfstate.last-complete",
                "bootstrapper.tfvars",
            ]
            .iter()
            .any(|n| name == *n)
        })
}

/// Names under `dir` that look like temporaries.
fn temps_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

fn image_with_modes(image: &Path) {
    for dir in ["app", "scripts", "modules/network/subnets", "empty"] {
        fs::create_dir_all(image.join(dir)).unwrap();
    }
    fs::write(image.join("app/main.tf"), module("image")).unwrap();
    fs::write(image.join("scripts/run.sh"), "#!/bin/sh\nexec true\n").unwrap();
    fs::write(image.join("modules/network/main.tf"), "# network\n").unwrap();
    fs::write(
        image.join("modules/network/subnets/variables.tf"),
        "variable \"cidr\" {}\n",
    )
    .unwrap();
    fs::write(image.join("modules/secret.auto.tfvars"), "x = 1\n").unwrap();
    let mode = |path: &str, mode: u32| {
        fs::set_permissions(image.join(path), fs::Permissions::from_mode(mode)).unwrap()
    };
    mode("scripts/run.sh", 0o755);
    mode("modules/secret.auto.tfvars", 0o600);
    mode("modules/network", 0o750);
    symlink("modules/network", image.join("network")).unwrap();
    symlink("../does-not-exist", image.join("scripts/dangling")).unwrap();
}

// ---------------------------------------------------------------------------

#[test]
fn the_image_tree_is_copied_bit_for_bit_and_the_steps_apply_from_it() {
    let b = Bootstrapper::new();
    let image = b.dir().join("image");
    image_with_modes(&image);
    setup(
        &b,
        &format!("image_dir = {}", toml_string(&image.display().to_string())),
    );

    let outcome = b.run(&["run"]);
    outcome.assert_success();
    assert_eq!(b.ledger(), ["create app image"], "{outcome}");
    let code = b.root().join("code");
    assert_eq!(tree(&image, &|_| false), tree(&code, &step_byproduct));
    assert!(
        fs::symlink_metadata(code.join("scripts/run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111
            == 0o111
    );

    let status = status_json(&b);
    assert_eq!(status["code"]["kind"], "image", "{status:#}");
    let identity = status["code"]["identity"].as_str().unwrap();
    assert!(identity.starts_with("sha256:"), "{status:#}");

    // The code in place is reused untouched: same identity, nothing applied again.
    let again = b.run(&["run"]);
    again.assert_success();
    assert!(again.stderr.contains("code: using"), "{again}");
    assert_eq!(code_identity(&b), identity);
    assert_eq!(b.ledger(), ["create app image"]);
}

#[test]
fn a_branch_a_tag_and_a_commit_are_cloned_over_file_urls() {
    let base = tempfile::tempdir().unwrap();
    let repo = Repo::with_history(base.path());
    clone_each_ref(&repo, &repo.file_url());
}

#[test]
fn a_branch_a_tag_and_a_commit_are_cloned_from_git_daemon() {
    let base = tempfile::tempdir().unwrap();
    let repo = Repo::with_history(base.path());
    let daemon = GitDaemon::start(&base.path().join("repos"), &base.path().join("daemon.log"));
    clone_each_ref(&repo, &daemon.url("infra.git"));
}

/// Clones `dev`, `v2` and the first commit (by an abbreviated id: it is no branch tip), each
/// into a fresh root, and checks that the step applied that very code.
fn clone_each_ref(repo: &Repo, url: &str) {
    let one = repo.id("main~1");
    for (git_ref, commit, version) in [
        ("dev", repo.id("dev"), "dev"),
        ("v2", repo.id("v2"), "two"),
        (&one[..10], one.clone(), "one"),
    ] {
        let b = Bootstrapper::new();
        setup(
            &b,
            &format!(
                "git_url = {}\ngit_ref = {}",
                toml_string(url),
                toml_string(git_ref)
            ),
        );
        let outcome = b.run(&["run"]);
        outcome.assert_success();
        assert_eq!(
            b.ledger(),
            [format!("create app {version}")],
            "{git_ref}: {outcome}"
        );
        assert!(
            outcome.stderr.contains(&format!("at commit {commit}")),
            "{outcome}"
        );
        let status = status_json(&b);
        assert_eq!(status["code"]["kind"], "git", "{status:#}");
        assert_eq!(status["code"]["identity"], commit.as_str(), "{status:#}");
        assert_eq!(status["code"]["git_ref"], git_ref, "{status:#}");

        let code = b.root().join("code");
        let head = git(&code, &["rev-parse", "HEAD"]);
        assert_eq!(head, commit, "{git_ref}");
        assert_eq!(
            git(&code, &["status", "--porcelain", "--untracked-files=no"]),
            "",
            "{git_ref}: the checkout matches the commit"
        );
        let script = fs::metadata(code.join("scripts/hello.sh")).unwrap();
        assert_eq!(script.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            fs::read_link(code.join("current")).unwrap(),
            Path::new("app")
        );
        assert!(temps_in(&b.root()).is_empty());
    }
}

/// An image of 5,000 files, big enough for a signal to land in the middle of copying it.
fn big_image(b: &Bootstrapper) -> PathBuf {
    let image = b.dir().join("image");
    fs::create_dir_all(image.join("app")).unwrap();
    fs::write(image.join("app/main.tf"), module("big")).unwrap();
    let filler = vec![b'x'; 2048];
    for d in 0..50 {
        let dir = image.join(format!("modules/m{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}.tf")), &filler).unwrap();
        }
    }
    setup(
        b,
        &format!("image_dir = {}", toml_string(&image.display().to_string())),
    );
    image
}

/// Polls (tightly: the copy is quick) until the copy's temporary sibling appears.
fn wait_for_copy_to_start(running: &crate::support::Running, root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while temps_in(root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no copy started\n{}",
            running.stderr()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_kill_in_the_middle_of_a_copy_leaves_no_half_tree() {
    let b = Bootstrapper::new();
    let image = big_image(&b);
    let running = b.spawn(&["run"]);
    let root = b.root();
    wait_for_copy_to_start(&running, &root);
    running.kill_session();
    assert!(
        !root.join("code").exists(),
        "the kill came after the copy was complete; the test needs a bigger tree"
    );
    assert_eq!(temps_in(&root).len(), 1, "a half copy is left to clean");

    let outcome = b.run(&["run"]);
    outcome.assert_success();
    assert!(
        outcome.stderr.contains("left unfinished by an earlier run"),
        "{outcome}"
    );
    assert_eq!(
        tree(&image, &|_| false),
        tree(&root.join("code"), &step_byproduct)
    );
    assert_eq!(temps_in(&root), Vec::<String>::new());
    assert_eq!(b.ledger(), ["create app big"]);
}

#[test]
fn sigterm_in_the_middle_of_a_copy_stops_it_at_once_and_cleans_up() {
    let b = Bootstrapper::new();
    let image = big_image(&b);
    let running = b.spawn(&["run"]);
    let root = b.root();
    wait_for_copy_to_start(&running, &root);
    running.signal(libc::SIGTERM);
    let outcome = running.wait(Duration::from_secs(60));
    assert_eq!(outcome.code, Some(143), "{outcome}");
    assert!(
        !root.join("code").exists(),
        "the signal came after the copy was complete; the test needs a bigger tree"
    );
    assert_eq!(
        temps_in(&root),
        Vec::<String>::new(),
        "a stopped copy removes its temporary"
    );
    assert!(b.ledger().is_empty(), "no step ran");

    b.run(&["run"]).assert_success();
    assert_eq!(
        tree(&image, &|_| false),
        tree(&root.join("code"), &step_byproduct)
    );
    assert_eq!(b.ledger(), ["create app big"]);
}

#[test]
fn a_new_commit_is_applied_after_reset_source_and_only_then() {
    let base = tempfile::tempdir().unwrap();
    let repo = Repo::new(base.path());
    let one = repo.id("main");
    let b = Bootstrapper::new();
    setup(
        &b,
        &format!(
            "git_url = {}\ngit_ref = \"main\"",
            toml_string(&repo.file_url())
        ),
    );
    b.run(&["run"]).assert_success();
    assert_eq!(b.ledger(), ["create app one"]);
    assert_eq!(code_identity(&b), one);

    let two = repo.commit("two");
    repo.push();
    let rerun = b.run(&["run"]);
    rerun.assert_success();
    assert!(rerun.stderr.contains("inputs unchanged"), "{rerun}");
    assert_eq!(
        b.ledger(),
        ["create app one"],
        "the code on the PVC is fixed"
    );
    assert_eq!(code_identity(&b), one);

    let reset = b.run(&["reset", "source"]);
    reset.assert_success();
    assert!(!b.root().join("code").exists(), "{reset}");
    let rerun = b.run(&["run"]);
    rerun.assert_success();
    assert!(
        rerun.stderr.contains("inputs changed") && rerun.stderr.contains("(code)"),
        "{rerun}"
    );
    assert_eq!(code_identity(&b), two);
    // The step's local state outlived the old code: the old resource was replaced, not
    // created a second time beside it.
    assert_eq!(
        b.ledger(),
        ["create app one", "destroy app one", "create app two"]
    );

    // A fresh clone of the same commit changes nothing.
    b.run(&["reset", "source"]).assert_success();
    let rerun = b.run(&["run"]);
    rerun.assert_success();
    assert!(rerun.stderr.contains("inputs unchanged"), "{rerun}");
    assert_eq!(b.ledger().len(), 3);
}

#[test]
fn a_token_in_an_unreachable_https_url_appears_nowhere() {
    const URL_TOKEN: &str = "ghp-url-token-4f1c9a7e";
    const FILE_TOKEN: &str = "file-token-77d2e0b1";
    let mut b = Bootstrapper::new();
    let port = free_port();
    let token_file = b.dir().join("token");
    fs::write(&token_file, format!("{FILE_TOKEN}\n")).unwrap();
    b.env("BOOTSTRAPPER_GIT_TOKEN_FILE", &token_file);
    setup(
        &b,
        &format!("git_url = \"https://x-access-token:{URL_TOKEN}@127.0.0.1:{port}/org/infra.git\"\ngit_ref = \"main\""),
    );

    let outcome = b.run(&["run"]);
    outcome.assert_code(1);
    assert!(
        outcome.stderr.contains(&format!(
            "cannot reach https://********@127.0.0.1:{port}/org/infra.git"
        )),
        "{outcome}"
    );
    let status = b.run(&["status", "--json"]);
    status.assert_success();
    let plain_status = b.run(&["status"]);
    plain_status.assert_success();
    let mut seen = vec![
        ("run stdout", outcome.stdout.clone()),
        ("run stderr", outcome.stderr.clone()),
        ("status --json", status.stdout),
        ("status", plain_status.stdout + &plain_status.stderr),
    ];
    for (path, entry) in tree(&b.root(), &|_| false) {
        if let Entry::File { content, .. } = entry {
            seen.push((
                "a file",
                format!("{}: {}", path.display(), String::from_utf8_lossy(&content)),
            ));
        }
    }
    for (what, text) in &seen {
        for token in [URL_TOKEN, FILE_TOKEN] {
            assert!(!text.contains(token), "{what} shows the token:\n{text}");
        }
    }
    assert!(!b.root().join("code").exists());
    assert!(temps_in(&b.root()).is_empty());
}

/// An http server that refuses every request with 401 and remembers the credentials each
/// request carried (the Authorization header's value, if any). A real git server cannot be
/// made to refuse here without one. Dropping it stops it.
struct Refusing {
    port: u16,
    authorized: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Refusing {
    fn start() -> Refusing {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let authorized = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (authorized.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: libgit2 asks a handful of times at most.
            for stream in listener.incoming().take(50) {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut credentials = None;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            credentials = Some(value.trim().to_string());
                        }
                    }
                    line.clear();
                }
                seen.lock().unwrap().push(credentials);
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Refusing {
            port,
            authorized,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/org/infra.git", self.port)
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept; the loop then sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn refused_credentials_are_named_by_their_source_and_never_shown() {
    const TOKEN: &str = "env-token-3b9d5c21";
    let server = Refusing::start();
    let mut b = Bootstrapper::new();
    b.env("BOOTSTRAPPER_GIT_TOKEN", TOKEN);
    setup(&b, &format!("git_url = {}", toml_string(&server.url())));
    let outcome = b.run(&["run"]);
    outcome.assert_code(2);
    assert!(
        outcome.stderr.contains(&format!(
            "authentication to {} failed: the server refused the credentials from BOOTSTRAPPER_GIT_TOKEN",
            server.url()
        )),
        "{outcome}"
    );
    assert!(!outcome.stderr.contains(TOKEN) && !outcome.stdout.contains(TOKEN));
    // The token went as the password of the default user, and nothing else was offered.
    let offered = |user: &str| Some(format!("Basic {}", base64(&format!("{user}:{TOKEN}"))));
    let sent = server.authorized.lock().unwrap().clone();
    assert!(
        sent.contains(&offered("x-access-token")),
        "the token was never offered as x-access-token's password: {sent:?}"
    );
    assert!(
        sent.iter()
            .all(|c| c.is_none() || *c == offered("x-access-token")),
        "{sent:?}"
    );

    // With a user name set, the token is that user's password.
    server.authorized.lock().unwrap().clear();
    let mut b = Bootstrapper::new();
    b.env("BOOTSTRAPPER_GIT_TOKEN", TOKEN);
    b.env("BOOTSTRAPPER_GIT_USERNAME", "deploy-bot");
    setup(&b, &format!("git_url = {}", toml_string(&server.url())));
    b.run(&["run"]).assert_code(2);
    let sent = server.authorized.lock().unwrap().clone();
    assert!(sent.contains(&offered("deploy-bot")), "{sent:?}");

    // Without credentials the error says none are set, and none were sent.
    server.authorized.lock().unwrap().clear();
    let b = Bootstrapper::new();
    setup(&b, &format!("git_url = {}", toml_string(&server.url())));
    let outcome = b.run(&["run"]);
    outcome.assert_code(2);
    let sent = server.authorized.lock().unwrap().clone();
    assert!(
        !sent.is_empty() && sent.iter().all(Option::is_none),
        "{sent:?}"
    );
    assert!(outcome.stderr.contains("none is set"), "{outcome}");
    assert!(
        outcome.stderr.contains("BOOTSTRAPPER_GIT_TOKEN"),
        "{outcome}"
    );
}

#[test]
fn an_unknown_ref_names_the_ref_the_url_and_the_refs_there() {
    let base = tempfile::tempdir().unwrap();
    let repo = Repo::with_history(base.path());
    let b = Bootstrapper::new();
    setup(
        &b,
        &format!(
            "git_url = {}\ngit_ref = \"no-such-branch\"",
            toml_string(&repo.file_url())
        ),
    );
    let outcome = b.run(&["run"]);
    outcome.assert_code(2);
    let expected = format!(
        "`source.git_ref` = `no-such-branch` is not a branch, tag or commit of {}",
        repo.file_url()
    );
    assert!(outcome.stderr.contains(&expected), "{outcome}");
    assert!(
        outcome
            .stderr
            .contains("branches and tags there: dev, main, v2"),
        "{outcome}"
    );
    assert!(!b.root().join("code").exists());
    assert!(temps_in(&b.root()).is_empty());
}

#[test]
fn a_missing_repository_and_an_image_dir_that_is_a_file_are_input_errors() {
    let b = Bootstrapper::new();
    let missing = b.dir().join("nowhere.git");
    setup(
        &b,
        &format!(
            "git_url = {}",
            toml_string(&format!("file://{}", missing.display()))
        ),
    );
    let outcome = b.run(&["run"]);
    outcome.assert_code(2);
    assert!(outcome.stderr.contains("no git repository at"), "{outcome}");

    let b = Bootstrapper::new();
    let file = b.dir().join("image");
    fs::write(&file, "not a directory").unwrap();
    setup(
        &b,
        &format!("image_dir = {}", toml_string(&file.display().to_string())),
    );
    let outcome = b.run(&["run"]);
    outcome.assert_code(2);
    assert!(
        outcome.stderr.contains(&format!(
            "`source.image_dir` {} is not a directory",
            file.display()
        )),
        "{outcome}"
    );
}

#[test]
fn a_step_cannot_be_named_source() {
    let b = Bootstrapper::new();
    b.write_workflow(
        "[source]\ndir = \"code\"\nimage_dir = \"image\"\n\n[[step]]\nname = \"source\"\ndir = \"app\"\n",
    );
    b.write_params(&json!({}));
    let outcome = b.run(&["validate"]);
    outcome.assert_code(2);
    assert!(
        outcome.stderr.contains("step name `source` is reserved"),
        "{outcome}"
    );
}

/// Standard base64 with padding, as HTTP Basic credentials are sent.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
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
