//! The image's provider mirror: `deploy/providers/unpack-mirror.sh` turns the packed layout
//! that `terraform providers mirror` writes into the unpacked one, and real terraform's `init`,
//! with `provider_installation` pointing there (as `deploy/providers/terraform.rc` does), links
//! every root to the mirror's one copy, also when the roots' `init`s run at the same time.
//! No registry is reachable here, so the provider is packaged locally.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

const ROOTS: usize = 4;
const PLATFORM: &str = "linux_amd64";

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A packed mirror holding example.com/local/dummy 1.0.0: a zip of one executable.
fn packed_mirror(dir: &Path) {
    let pkg = dir.join("pkg");
    fs::create_dir_all(&pkg).expect("mkdir");
    let exe = pkg.join("terraform-provider-dummy_v1.0.0");
    fs::write(&exe, "#!/bin/sh\nexit 1\n").expect("write provider");
    let zips = dir.join("packed/example.com/local/dummy");
    fs::create_dir_all(&zips).expect("mkdir");
    run(Command::new("zip")
        .arg("-q")
        .arg(zips.join(format!("terraform-provider-dummy_1.0.0_{PLATFORM}.zip")))
        .arg("terraform-provider-dummy_v1.0.0")
        .current_dir(&pkg));
}

#[test]
fn roots_initialised_at_once_link_to_the_unpacked_mirror() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    packed_mirror(dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/providers/unpack-mirror.sh");
    run(Command::new(&script)
        .arg(dir.join("packed"))
        .arg(dir.join("unpacked")));
    let unpacked = dir.join(format!("unpacked/example.com/local/dummy/1.0.0/{PLATFORM}"));
    assert!(
        unpacked.join("terraform-provider-dummy_v1.0.0").is_file(),
        "unpack-mirror.sh left no provider at {}",
        unpacked.display()
    );

    let rc = dir.join("terraform.rc");
    fs::write(
        &rc,
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n  }}\n}}\n",
            dir.join("unpacked").display()
        ),
    )
    .expect("write rc");
    let roots: Vec<_> = (0..ROOTS).map(|i| dir.join(format!("root-{i}"))).collect();
    for root in &roots {
        fs::create_dir_all(root).expect("mkdir root");
        fs::write(
            root.join("main.tf"),
            "terraform {\n  required_providers {\n    dummy = {\n      source  = \"example.com/local/dummy\"\n      version = \"1.0.0\"\n    }\n  }\n}\n",
        )
        .expect("write main.tf");
    }
    thread::scope(|s| {
        for root in &roots {
            let rc = &rc;
            s.spawn(move || {
                run(Command::new("terraform")
                    .args(["init", "-input=false", "-no-color"])
                    .current_dir(root)
                    .env("TF_CLI_CONFIG_FILE", rc)
                    .env("CHECKPOINT_DISABLE", "1")
                    .env_remove("TF_PLUGIN_CACHE_DIR"));
            });
        }
    });
    for root in &roots {
        let installed = root.join(format!(
            ".terraform/providers/example.com/local/dummy/1.0.0/{PLATFORM}"
        ));
        let meta = fs::symlink_metadata(&installed)
            .unwrap_or_else(|e| panic!("{}: {e}", installed.display()));
        assert!(
            meta.file_type().is_symlink(),
            "{} is a copy, not a link to the mirror",
            installed.display()
        );
        assert_eq!(
            fs::canonicalize(&installed).expect("resolve link"),
            fs::canonicalize(&unpacked).expect("resolve mirror")
        );
    }
}
