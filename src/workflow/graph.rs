//! Which steps wait for which: the workflow's dependency graph.
//!
//! A step waits for every step it names in `needs` and every step whose outputs its templates
//! use. A step with neither waits for the step before it in the file, so a workflow written
//! before `needs` existed keeps its order; `needs = []` says it waits for nothing.

use std::collections::BTreeSet;

use crate::base::error::{Problem, Problems};
use crate::workflow::file::Workflow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// For each step, the steps it waits for.
    needs: Vec<BTreeSet<usize>>,
}

impl Graph {
    /// The graph of `workflow`, where `references(i)` are the steps whose outputs step `i`
    /// uses. A name in `needs` that is no step, and steps that wait for each other, are
    /// problems; each cycle names every step in it with its position.
    pub fn build(
        workflow: &Workflow,
        references: impl Fn(usize) -> BTreeSet<usize>,
    ) -> Result<Graph, Problems> {
        let mut problems = Problems::default();
        let mut needs = Vec::with_capacity(workflow.steps.len());
        for (index, step) in workflow.steps.iter().enumerate() {
            let mut waits_for = references(index);
            // Using its own outputs is reported where templates are rendered.
            waits_for.remove(&index);
            for need in step.needs.iter().flatten() {
                match workflow.step_index(&need.name) {
                    Some(j) if j == index => problems.push(
                        Problem::new(format!("`needs` names `{}`, this very step", need.name))
                            .at(need.origin.clone())
                            .in_step(&step.name)
                            .hint("a step cannot wait for itself; remove it from `needs`"),
                    ),
                    Some(j) => {
                        waits_for.insert(j);
                    }
                    None => problems.push(
                        Problem::new(format!(
                            "`needs` names `{}`, which is not a step of this workflow",
                            need.name
                        ))
                        .at(need.origin.clone())
                        .in_step(&step.name)
                        .hint(format!(
                            "steps are: {}",
                            workflow
                                .steps
                                .iter()
                                .map(|s| format!("`{}`", s.name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    ),
                }
            }
            if step.needs.is_none() && waits_for.is_empty() && index > 0 {
                waits_for.insert(index - 1);
            }
            needs.push(waits_for);
        }
        let graph = Graph { needs };
        for cycle in graph.cycles() {
            let first = &workflow.steps[cycle[0]];
            let path: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&cycle[0]))
                .map(|&i| {
                    let step = &workflow.steps[i];
                    format!("`{}` ({})", step.name, step.location)
                })
                .collect();
            problems.push(
                Problem::new(format!(
                    "steps wait for each other, so none of them could start: {}",
                    path.join(" waits for ")
                ))
                .at(first.location.clone())
                .in_step(&first.name)
                .hint("remove one of these from the other's `needs`"),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(graph)
    }

    pub fn len(&self) -> usize {
        self.needs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.needs.is_empty()
    }

    /// The steps `index` waits for.
    pub fn needs(&self, index: usize) -> &BTreeSet<usize> {
        &self.needs[index]
    }

    /// The steps that wait for `index`.
    pub fn dependents(&self, index: usize) -> BTreeSet<usize> {
        (0..self.len())
            .filter(|&i| self.needs[i].contains(&index))
            .collect()
    }

    /// The same steps, each waiting for those that wait for it here: `destroy`'s order.
    pub fn reversed(&self) -> Graph {
        Graph {
            needs: (0..self.len()).map(|i| self.dependents(i)).collect(),
        }
    }

    /// For each step, its wave: 0 for a step that waits for nothing, else one more than the
    /// latest wave it waits for. Steps of one wave can run together.
    pub fn waves(&self) -> Vec<usize> {
        let mut wave: Vec<Option<usize>> = vec![None; self.len()];
        fn of(g: &Graph, i: usize, wave: &mut Vec<Option<usize>>) -> usize {
            if let Some(w) = wave[i] {
                return w;
            }
            let w = g.needs[i]
                .iter()
                .map(|&j| of(g, j, wave) + 1)
                .max()
                .unwrap_or(0);
            wave[i] = Some(w);
            w
        }
        (0..self.len()).map(|i| of(self, i, &mut wave)).collect()
    }

    /// Every cycle, once each, as the steps in it in waiting order, starting from the
    /// earliest step in the file.
    fn cycles(&self) -> Vec<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut mark = vec![Mark::New; self.len()];
        let mut found: Vec<Vec<usize>> = Vec::new();
        for start in 0..self.len() {
            if mark[start] != Mark::New {
                continue;
            }
            // An explicit stack: (step, the steps it waits for still to visit).
            let mut path: Vec<usize> = vec![start];
            let mut pending: Vec<Vec<usize>> = vec![self.needs[start].iter().copied().collect()];
            mark[start] = Mark::OnPath;
            while let Some(next) = pending.last_mut() {
                match next.pop() {
                    Some(j) => match mark[j] {
                        Mark::New => {
                            mark[j] = Mark::OnPath;
                            path.push(j);
                            pending.push(self.needs[j].iter().copied().collect());
                        }
                        Mark::OnPath => {
                            let at = path.iter().position(|&p| p == j).expect("on the path");
                            let mut cycle = path[at..].to_vec();
                            let min = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
                            cycle.rotate_left(min);
                            if !found.contains(&cycle) {
                                found.push(cycle);
                            }
                        }
                        Mark::Done => {}
                    },
                    None => {
                        pending.pop();
                        if let Some(done) = path.pop() {
                            mark[done] = Mark::Done;
                        }
                    }
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn graph(text: &str, refs: &[(usize, usize)]) -> Result<Graph, Problems> {
        let wf = crate::workflow::file::parse(Path::new("wf.toml"), text).unwrap();
        Graph::build(&wf, |i| {
            refs.iter()
                .filter(|(from, _)| *from == i)
                .map(|(_, to)| *to)
                .collect()
        })
    }

    fn steps(specs: &[(&str, &str)]) -> String {
        let mut text = "[source]\ndir = \"c\"\n".to_string();
        for (name, extra) in specs {
            text.push_str(&format!(
                "[[step]]\nname = \"{name}\"\ndir = \"{name}\"\n{extra}\n"
            ));
        }
        text
    }

    fn set(items: &[usize]) -> BTreeSet<usize> {
        items.iter().copied().collect()
    }

    #[test]
    fn without_needs_a_step_follows_the_one_before() {
        let g = graph(&steps(&[("a", ""), ("b", ""), ("c", "")]), &[]).unwrap();
        assert_eq!(g.needs(0), &set(&[]));
        assert_eq!(g.needs(1), &set(&[0]));
        assert_eq!(g.needs(2), &set(&[1]));
        assert_eq!(g.waves(), [0, 1, 2]);
        assert_eq!(g.dependents(1), set(&[2]));
    }

    #[test]
    fn a_diamond_from_needs_and_references() {
        let text = steps(&[
            ("a", ""),
            ("b", "needs = [\"a\"]"),
            ("c", ""),
            ("d", "needs = [\"b\"]"),
        ]);
        // c uses a's outputs, d uses c's: references count as needs.
        let g = graph(&text, &[(2, 0), (3, 2)]).unwrap();
        assert_eq!(g.needs(1), &set(&[0]));
        assert_eq!(g.needs(2), &set(&[0]), "a reference replaces the default");
        assert_eq!(g.needs(3), &set(&[1, 2]));
        assert_eq!(g.waves(), [0, 1, 1, 2]);
        assert_eq!(g.dependents(0), set(&[1, 2]));
        let back = g.reversed();
        assert_eq!(back.needs(0), &set(&[1, 2]));
        assert_eq!(back.waves(), [2, 1, 1, 0]);
    }

    #[test]
    fn empty_needs_waits_for_nothing() {
        let g = graph(&steps(&[("a", ""), ("b", "needs = []")]), &[]).unwrap();
        assert!(g.needs(1).is_empty());
        assert_eq!(g.waves(), [0, 0]);
    }

    #[test]
    fn unknown_and_own_names_are_problems_at_their_position() {
        let text = steps(&[("a", "needs = [\"nope\"]"), ("b", "needs = [\"b\"]")]);
        let err = graph(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("wf.toml:6:10"), "{err}");
        assert!(err.contains("`nope`, which is not a step"), "{err}");
        assert!(err.contains("wf.toml:10:10"), "{err}");
        assert!(err.contains("this very step"), "{err}");
    }

    #[test]
    fn a_cycle_names_every_step_in_it_with_its_position() {
        let text = steps(&[
            ("a", "needs = []"),
            ("b", "needs = [\"d\"]"),
            ("c", "needs = [\"b\"]"),
            ("d", "needs = [\"c\"]"),
        ]);
        let err = graph(&text, &[]).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        let text = err.to_string();
        for at in [
            "`b` (wf.toml:7:1)",
            "`c` (wf.toml:11:1)",
            "`d` (wf.toml:15:1)",
        ] {
            assert!(text.contains(at), "{at} in {text}");
        }
        assert!(!text.contains("`a` ("), "{text}");
    }
}
