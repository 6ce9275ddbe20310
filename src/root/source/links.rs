//! Links that would lead out of a tree: refused when the code is copied, and checked in the
//! code already on the root, so that terraform never writes outside the root.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::base::error::{Problem, Problems};
use crate::root::journal::Journal;

/// A symbolic link in the image's tree that points out of it.
#[derive(Debug)]
pub(super) struct LeavingLink {
    pub(super) link: PathBuf,
    pub(super) target: PathBuf,
}

impl std::fmt::Display for LeavingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the link {} points to {}",
            self.link.display(),
            self.target.display()
        )
    }
}

impl std::error::Error for LeavingLink {}

/// Whether a link at `rel` (relative to a tree's top) to `target` stays inside the tree,
/// judged on the names alone: an absolute target, or one that climbs above the top, leaves it.
pub(super) fn stays_inside(rel: &Path, target: &Path) -> bool {
    let mut depth: usize = rel.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The directories that must stay under the root once every link is followed: the code's
/// and each step's. Each that leads outside is a problem naming the link that takes it there.
pub fn confinement_problems(
    root: &Path,
    dirs: &[(Option<&crate::workflow::file::Step>, PathBuf)],
) -> Problems {
    let mut problems = Problems::default();
    let Ok(real_root) = root.canonicalize() else {
        return problems;
    };
    for (step, dir) in dirs {
        let Some((link, target)) = link_out_of(&real_root, root, dir) else {
            continue;
        };
        let what = match step {
            Some(_) => "its directory",
            None => "the code directory",
        };
        let mut problem = Problem::new(format!(
            "{what} {} leads outside the root {}: {} is a link to {}",
            dir.display(),
            root.display(),
            link.display(),
            target.display()
        ))
        .hint("terraform would write its state and the rendered vars (secrets) there; replace the link with the directory it points to, under the root");
        if let Some(step) = step {
            problem = problem.at(step.dir.origin.clone()).in_step(&step.name);
        }
        problems.push(problem);
    }
    problems
}

/// [`confinement_problems`] of the code already on the root, if any, for `validate`.
pub fn check_links(root: &Path, loaded: &crate::workflow::load::Loaded) -> Problems {
    let renderer = loaded.renderer();
    let Ok(source) = renderer.render_source() else {
        return Problems::default();
    };
    let code = root.join(&source.dir);
    if !code.exists() {
        return Problems::default();
    }
    let outputs = crate::root::recorded::read_journal(loaded, &Journal::at(root))
        .map(|r| r.outputs)
        .unwrap_or_default();
    let mut dirs = vec![(None, code.clone())];
    for (index, step) in loaded.workflow.steps.iter().enumerate() {
        if let Ok(rendered) = renderer.render_step(index, &outputs, true) {
            dirs.push((Some(step), code.join(&rendered.dir)));
        }
    }
    confinement_problems(root, &dirs)
}

/// The first link on the way from `root` to `dir` that leads out of `real_root`, with its
/// target; none when `dir` does not exist or stays inside.
fn link_out_of(real_root: &Path, root: &Path, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let real = dir.canonicalize().ok()?;
    if real.starts_with(real_root) {
        return None;
    }
    let rel = dir.strip_prefix(root).ok()?;
    let mut at = root.to_path_buf();
    for component in rel.components() {
        at.push(component);
        let is_link = at
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        if is_link && !at.canonicalize().is_ok_and(|p| p.starts_with(real_root)) {
            let target = fs::read_link(&at).unwrap_or_else(|_| real.clone());
            return Some((at, target));
        }
    }
    Some((dir.to_path_buf(), real))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_judged_by_where_they_point_from_where_they_are() {
        assert!(stays_inside(Path::new("link"), Path::new("modules/a")));
        assert!(stays_inside(Path::new("a/b/link"), Path::new("../../c")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("../../c")));
        assert!(!stays_inside(Path::new("link"), Path::new("/etc")));
        assert!(!stays_inside(Path::new("link"), Path::new("./../x")));
    }
}
