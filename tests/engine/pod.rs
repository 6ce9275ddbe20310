//! The entrypoint as a pod runs it: `run --hold` under tini as PID 1 of its own PID namespace,
//! `kubectl exec` as `nsenter`, and the kubelet's SIGTERM sent to tini from outside. When tini
//! exits, the kernel kills whatever is left in the namespace, as the end of a container does.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::pod::{self, Pod};
use crate::support::{local_state_resources, sigint, wait_for, Bootstrapper};
use serde_json::json;

/// Bounds an apply of both steps, or a destroy, on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(180);

/// The module of both steps. `slow` waits while a gate file exists (when created, and when
/// destroyed), so a test holds terraform in a provisioner for exactly as long as it needs.
/// With `orphan_gate`, `first` leaves a process behind that lives while that file exists.
const MODULE: &str = r#"
variable "name" {
  type = string
}

variable "ledger" {
  type = string
}

variable "apply_gate" {
  type = string
}

variable "destroy_gate" {
  type = string
}

variable "orphan_gate" {
  type    = string
  default = ""
}

resource "terraform_data" "first" {
  input = { ledger = var.ledger, name = var.name }

  provisioner "local-exec" {
    command     = <<-EOT
      echo "create $NAME/first" >> "$LEDGER"
      if [ -n "$ORPHAN" ]; then
        sh -c 'while [ -e "$1" ]; do sleep 0.1; done' orphan "$ORPHAN" </dev/null >/dev/null 2>&1 &
        echo $! > "$ORPHAN.pid"
      fi
    EOT
    environment = { LEDGER = var.ledger, NAME = var.name, ORPHAN = var.orphan_gate }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "echo \"destroy $NAME/first\" >> \"$LEDGER\""
    environment = { LEDGER = self.input.ledger, NAME = self.input.name }
  }
}

resource "terraform_data" "slow" {
  depends_on = [terraform_data.first]
  input      = { ledger = var.ledger, name = var.name, destroy_gate = var.destroy_gate }

  provisioner "local-exec" {
    command     = "echo \"start $NAME/slow\" >> \"$LEDGER\"; while [ -e \"$GATE\" ]; do sleep 0.1; done; echo \"create $NAME/slow\" >> \"$LEDGER\""
    environment = { LEDGER = var.ledger, NAME = var.name, GATE = var.apply_gate }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "echo \"destroying $NAME/slow\" >> \"$LEDGER\"; while [ -e \"$GATE\" ]; do sleep 0.1; done; echo \"destroy $NAME/slow\" >> \"$LEDGER\""
    environment = { LEDGER = self.input.ledger, NAME = self.input.name, GATE = self.input.destroy_gate }
  }
}

resource "terraform_data" "last" {
  depends_on = [terraform_data.slow]
  input      = { ledger = var.ledger, name = var.name }

  provisioner "local-exec" {
    command     = "echo \"create $NAME/last\" >> \"$LEDGER\""
    environment = { LEDGER = var.ledger, NAME = var.name }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "echo \"destroy $NAME/last\" >> \"$LEDGER\""
    environment = { LEDGER = self.input.ledger, NAME = self.input.name }
  }
}
"#;

const WORKFLOW: &str = r#"
[source]
dir = "code"
image_dir = "tree"

[[step]]
name = "one"
dir = "one"
vars = "one.tfvars.tera"

[[step]]
name = "two"
dir = "two"
vars = "two.tfvars.tera"
"#;

/// A root with the two-step workflow; the gates are files beside it, none closed yet.
struct Fixture {
    b: Bootstrapper,
}

impl Fixture {
    fn new() -> Self {
        let b = Bootstrapper::new();
        for step in ["one", "two"] {
            let dir = b.dir().join("tree").join(step);
            fs::create_dir_all(&dir).expect("create module dir");
            fs::write(dir.join("main.tf"), MODULE).expect("write module");
            // Only `two` waits at its gates; only `one` leaves an orphan.
            let (gates, orphan) = match step {
                "one" => (false, r#"{{ params.orphan_gate }}"#),
                _ => (true, ""),
            };
            let gate = |name: &str| match gates {
                true => format!("{{{{ params.{name}_gate }}}}"),
                false => String::new(),
            };
            fs::write(
                b.dir().join(format!("{step}.tfvars.tera")),
                format!(
                    "name = \"{step}\"\nledger = \"{{{{ params.ledger }}}}\"\n\
                     apply_gate = \"{}\"\ndestroy_gate = \"{}\"\n\
                     orphan_gate = \"{orphan}\"\n",
                    gate("apply"),
                    gate("destroy"),
                ),
            )
            .expect("write template");
        }
        b.write_workflow(WORKFLOW);
        let f = Fixture { b };
        f.b.write_params(&json!({
            "ledger": f.b.ledger_path(),
            "apply_gate": f.gate("apply"),
            "destroy_gate": f.gate("destroy"),
            "orphan_gate": f.gate("orphan"),
        }));
        f
    }

    fn gate(&self, name: &str) -> PathBuf {
        self.b.dir().join(format!("{name}-gate"))
    }

    fn close(&self, name: &str) {
        fs::write(self.gate(name), "").expect("create gate");
    }

    fn open(&self, name: &str) {
        fs::remove_file(self.gate(name)).expect("remove gate");
    }

    fn state(&self, step: &str) -> Vec<String> {
        local_state_resources(
            &self
                .b
                .root()
                .join("code")
                .join(step)
                .join("terraform.tfstate"),
        )
    }

    fn marker(&self, step: &str, name: &str) -> bool {
        self.b
            .root()
            .join(".bootstrapper/steps")
            .join(step)
            .join(name)
            .exists()
    }

    /// Puts terraform behind the wrapper that records each SIGINT it gets and stays a while
    /// after the first; returns the record's path.
    fn count_sigints(&mut self) -> PathBuf {
        let record = self.b.dir().join("sigints");
        let wrapper = sigint::counting_terraform(self.b.dir(), &record);
        self.b.arg("--terraform").arg(wrapper);
        record
    }

    fn count(&self, line: &str) -> usize {
        self.b.ledger().iter().filter(|l| *l == line).count()
    }

    /// Starts the pod and waits until its entrypoint has applied both steps and idles.
    fn started_pod(&self) -> Pod {
        let pod = Pod::start(&self.b, &["run", "--hold"]);
        wait_for(|| pod.stderr().contains("holding until SIGTERM"), PATIENCE);
        pod
    }
}

fn all() -> Vec<String> {
    ["first", "last", "slow"]
        .iter()
        .map(|r| format!("terraform_data.{r}"))
        .collect()
}

fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Terraform was asked to stop once, and stopped on its own.
#[track_caller]
fn assert_one_graceful_sigint(stderr: &str) {
    assert_eq!(occurrences(stderr, "sent SIGINT"), 1, "{stderr}");
    assert_eq!(occurrences(stderr, "Interrupt received"), 1, "{stderr}");
    assert_eq!(occurrences(stderr, "grace period over"), 0, "{stderr}");
}

#[test]
fn a_pod_stopped_during_an_execd_destroy_lets_it_save_its_state_and_the_next_destroy_resumes() {
    let mut f = Fixture::new();
    let sigints = f.count_sigints();
    f.close("destroy");
    let pod = f.started_pod();

    let destroy = pod.exec(&f.b, &["destroy"]);
    wait_for(|| f.count("destroying two/slow") == 1, PATIENCE);
    pod.terminate();

    // The destroy ran to its own end: had the entrypoint exited first, the namespace's end
    // would have SIGKILLed it (and nsenter would report that signal, not an exit code).
    let destroyed = destroy.wait(PATIENCE);
    destroyed.assert_code(143);
    assert_one_graceful_sigint(&destroyed.stderr);
    sigint::assert_each_got_one(&sigints, 1, &destroyed.to_string());
    let stopped = pod.wait(PATIENCE);
    stopped.assert_success();
    assert!(
        stopped.stderr.contains("passed SIGTERM on to pid")
            && stopped.stderr.contains("stopped and let go of the lock"),
        "{stopped}"
    );

    // Terraform saved what it had destroyed: `last` is gone from the state, `slow` (whose
    // destroy was cut short) and `first` are still there; `one` was not touched.
    assert_eq!(
        f.state("two"),
        ["terraform_data.first", "terraform_data.slow"]
    );
    assert_eq!(f.state("one"), all());
    assert!(!f.marker("two", "destroyed"));

    f.open("destroy");
    f.b.run(&["destroy"]).assert_success();
    assert!(f.state("one").is_empty() && f.state("two").is_empty());
    assert!(f.marker("one", "destroyed") && f.marker("two", "destroyed"));
    assert_eq!(f.count("destroying two/slow"), 2, "{:#?}", f.b.ledger());
    for resource in [
        "two/last",
        "two/slow",
        "two/first",
        "one/last",
        "one/slow",
        "one/first",
    ] {
        assert_eq!(
            f.count(&format!("destroy {resource}")),
            1,
            "{:#?}",
            f.b.ledger()
        );
    }
    let ledger = f.b.ledger();
    let at = |line: &str| ledger.iter().position(|l| l == line).expect(line);
    assert!(
        at("destroy two/first") < at("destroy one/last"),
        "{ledger:#?}"
    );
}

#[test]
fn a_pod_stopped_mid_apply_exits_143_with_the_state_saved_and_the_next_run_completes() {
    let mut f = Fixture::new();
    let sigints = f.count_sigints();
    f.close("apply");
    let pod = Pod::start(&f.b, &["run", "--hold"]);
    wait_for(|| f.count("start two/slow") == 1, PATIENCE);
    pod.terminate();
    let stopped = pod.wait(PATIENCE);
    stopped.assert_code(143);
    assert_one_graceful_sigint(&stopped.stderr);
    sigint::assert_each_got_one(&sigints, 1, &stopped.to_string());

    assert_eq!(f.state("one"), all());
    let two = f.state("two");
    assert!(
        two.contains(&"terraform_data.first".to_string())
            && !two.contains(&"terraform_data.last".to_string()),
        "{two:?}"
    );
    assert!(f.marker("one", "inited") && !f.marker("two", "inited"));

    f.open("apply");
    f.b.run(&["run"]).assert_success();
    assert_eq!(f.state("two"), all());
    for resource in [
        "one/first",
        "one/slow",
        "one/last",
        "two/first",
        "two/slow",
        "two/last",
    ] {
        assert_eq!(
            f.count(&format!("create {resource}")),
            1,
            "{:#?}",
            f.b.ledger()
        );
    }
}

#[test]
fn an_idle_pod_reaps_what_terraform_left_behind_and_stops_at_once() {
    let f = Fixture::new();
    f.close("orphan");
    let pod = f.started_pod();

    // The provisioner's shell exited long ago; what it put in the background lives on, its
    // parent now PID 1.
    let pid_file = Path::new(&format!("{}.pid", f.gate("orphan").display())).to_path_buf();
    let inner: u32 = fs::read_to_string(&pid_file)
        .expect("orphan's pid")
        .trim()
        .parse()
        .expect("a pid");
    let orphan = pod.outside_pid(inner).expect("the orphan in the pod");
    assert_eq!(pod::parent(orphan), Some(pod.tini));

    f.open("orphan");
    assert!(
        pod::gone(orphan, Duration::from_secs(10)),
        "the orphan is still there: {:?}",
        pod::state(orphan)
    );
    wait_for(
        || pod.processes().iter().all(|(_, state)| *state != 'Z'),
        Duration::from_secs(10),
    );

    pod.terminate();
    let stopped = pod.wait(Duration::from_secs(10));
    stopped.assert_success();
    assert!(!stopped.stderr.contains("passed SIGTERM"), "{stopped}");
}
