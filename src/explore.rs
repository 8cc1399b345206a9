//! Exploration: runs steered toward the holes no placement executed.
//!
//! Made-up memory and stub return values send a stencil down its common
//! paths; the paths behind type guards and error checks are rarely taken
//! (at 1,024 random placements, 8% of the CPython 3.13 x86-64 holes still
//! never ran). Exploration takes a recorded run that passed a two-way branch
//! the wrong way for an unexecuted hole — the first branch on its path whose
//! other side can reach the hole and whose taken side cannot — and runs that
//! placement again with the branch sent the other way (the branch itself
//! does not run; every other instruction runs as it would). Each steered run
//! is recorded too, so the next attempt starts from where the last one got
//! to. Deterministic: paths, branches and holes are tried in a fixed order.
//!
//! A steered path may be one no input can produce (two branches on the same
//! condition sent opposite ways), so what a steered run shows is not a
//! finding of its own: the pipeline counts its site findings as
//! inconclusive. What it gives is coverage: each hole whose instruction ran
//! was observed at run time.

use crate::execute::{Flow, Steering};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Control flow between the code's instructions.
pub struct Cfg {
    flows: Vec<Flow>,
    /// Code offset → index into `flows`.
    at: BTreeMap<u32, usize>,
    code_addr: u64,
    /// Per instruction: the ones that may run right before it.
    predecessors: Vec<Vec<usize>>,
}

impl Cfg {
    pub fn new(flows: Vec<Flow>, code_addr: u64) -> Cfg {
        let at = flows.iter().enumerate().map(|(i, f)| (f.offset, i)).collect();
        let mut cfg = Cfg { flows, at, code_addr, predecessors: Vec::new() };
        let mut predecessors: Vec<Vec<usize>> = vec![Vec::new(); cfg.flows.len()];
        for i in 0..cfg.flows.len() {
            for s in cfg.successors(i) {
                predecessors[s].push(i);
            }
        }
        cfg.predecessors = predecessors;
        cfg
    }

    /// The instruction holding the byte at code offset `offset`.
    pub fn instruction_holding(&self, offset: u64) -> Option<usize> {
        let (_, &i) = self.at.range(..=offset as u32).next_back()?;
        let f = &self.flows[i];
        (offset < (f.offset + f.len) as u64).then_some(i)
    }

    fn index_of_address(&self, addr: u64) -> Option<usize> {
        let offset = u32::try_from(addr.checked_sub(self.code_addr)?).ok()?;
        self.at.get(&offset).copied()
    }

    /// Instructions that may run right after instruction `i`.
    fn successors(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let f = &self.flows[i];
        let next = self.at.get(&(f.offset + f.len)).copied().filter(|_| f.falls_through);
        let target = f.target.and_then(|t| self.index_of_address(t));
        next.into_iter().chain(target)
    }

    /// Per instruction: can control get from there to `goal`?
    fn reaching(&self, goal: usize) -> Vec<bool> {
        let mut seen = vec![false; self.flows.len()];
        let mut queue = VecDeque::from([goal]);
        seen[goal] = true;
        while let Some(i) = queue.pop_front() {
            for &p in &self.predecessors[i] {
                if !seen[p] {
                    seen[p] = true;
                    queue.push_back(p);
                }
            }
        }
        seen
    }

    /// Can control get from the entry (offset 0) to instruction `goal`?
    pub fn reachable_from_entry(&self, goal: usize) -> bool {
        self.at.get(&0).is_some_and(|&entry| self.reaching(goal)[entry])
    }

    fn index_of_offset(&self, offset: u32) -> Option<usize> {
        self.at.get(&offset).copied()
    }
}

/// A run that was made (steered or not) and the way its branches went.
struct Path {
    placement: u32,
    steering: Steering,
    branches: Vec<(u32, u32)>,
}

/// The runs made so far and the steered runs already tried.
#[derive(Default)]
pub struct Explorer {
    paths: Vec<Path>,
    /// Branch outcome sets already recorded (one path kept per set, so
    /// memory grows with distinct paths, not with placements).
    known: BTreeSet<Vec<(u32, u32)>>,
    tried: BTreeSet<(u32, Steering)>,
}

impl Explorer {
    /// No run recorded yet.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Remember a run's branches (a new set of outcomes only).
    pub fn record(&mut self, placement: u32, steering: &Steering, branches: &[(u32, u32)]) {
        let mut key = branches.to_vec();
        key.sort_unstable();
        if self.known.insert(key) {
            self.paths.push(Path { placement, steering: steering.clone(), branches: branches.to_vec() });
        }
    }

    /// The next steered run toward instruction `goal`: a recorded path's
    /// first branch that went where `goal` cannot be reached from but whose
    /// other side reaches it, sent the other way. `None`: no recorded path
    /// offers one not tried yet.
    pub fn next_toward(&mut self, cfg: &Cfg, goal: usize) -> Option<(u32, Steering)> {
        let reach = cfg.reaching(goal);
        // First a branch whose taken side cannot get to the goal at all;
        // then (loops: both sides of a loop's test reach what follows it) a
        // branch whose other side no run has taken yet.
        for away_only in [true, false] {
            if let Some(next) = self.first_untried(cfg, &reach, away_only) {
                return Some(next);
            }
        }
        None
    }

    fn first_untried(&mut self, cfg: &Cfg, reach: &[bool], away_only: bool) -> Option<(u32, Steering)> {
        let taken: BTreeSet<(u32, u32)> = self.paths.iter().flat_map(|p| p.branches.iter().copied()).collect();
        for path in &self.paths {
            for &(branch, went) in &path.branches {
                let Some(b) = cfg.index_of_offset(branch) else { continue };
                // `None`: it left the code (a guard's exit), away from every hole.
                let w = cfg.index_of_offset(went);
                if away_only && w.is_some_and(|w| reach[w]) {
                    continue;
                }
                let Some(other) = cfg.successors(b).find(|&s| Some(s) != w && reach[s]) else { continue };
                let to = cfg.flows[other].offset;
                if !away_only && taken.contains(&(branch, to)) {
                    continue;
                }
                let mut force: Vec<(u32, u32)> =
                    path.steering.force.iter().filter(|(at, _)| *at != branch).copied().collect();
                force.push((branch, to));
                force.sort_unstable();
                let steering = Steering { force };
                if self.tried.insert((path.placement, steering.clone())) {
                    return Some((path.placement, steering));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(offset: u32, falls_through: bool, target: Option<u64>, steerable: bool) -> Flow {
        Flow { offset, len: 2, falls_through, target, steerable }
    }

    /// 0: jz 6 | 2: nop | 4: ret | 6: nop (the hole) | 8: ret
    fn diamond() -> Cfg {
        let base = 0x1000;
        Cfg::new(
            vec![
                flow(0, true, Some(base + 6), true),
                flow(2, true, None, false),
                flow(4, false, None, false),
                flow(6, true, None, false),
                flow(8, false, None, false),
            ],
            base,
        )
    }

    #[test]
    fn a_branch_that_went_away_from_the_goal_is_sent_the_other_way_once() {
        let cfg = diamond();
        let goal = cfg.instruction_holding(7).unwrap();
        assert_eq!(goal, 3);
        assert!(cfg.reachable_from_entry(goal));
        let mut explorer = Explorer::default();
        explorer.record(5, &Steering::default(), &[(0, 2)]);
        let (placement, steering) = explorer.next_toward(&cfg, goal).unwrap();
        assert_eq!(placement, 5);
        assert_eq!(steering.force, vec![(0, 6)]);
        // Tried once: not offered again.
        assert_eq!(explorer.next_toward(&cfg, goal), None);
    }

    #[test]
    fn a_guard_that_left_the_code_is_sent_on_toward_the_goal() {
        // 0: jz out-of-code | 2: nop | 4: nop (the hole) | 6: ret
        let base = 0x1000;
        let cfg = Cfg::new(
            vec![
                flow(0, true, Some(0x9000), true),
                flow(2, true, None, false),
                flow(4, true, None, false),
                flow(6, false, None, false),
            ],
            base,
        );
        let mut explorer = Explorer::default();
        explorer.record(0, &Steering::default(), &[(0, u32::MAX)]);
        let (_, steering) = explorer.next_toward(&cfg, 2).expect("the guard's fall-through reaches the hole");
        assert_eq!(steering.force, vec![(0, 2)]);
    }

    #[test]
    fn a_path_that_already_reaches_the_goal_offers_nothing() {
        let cfg = diamond();
        let mut explorer = Explorer::default();
        explorer.record(0, &Steering::default(), &[(0, 6)]);
        assert_eq!(explorer.next_toward(&cfg, 3), None);
    }

    #[test]
    fn code_after_a_return_is_unreachable_from_the_entry() {
        let base = 0x1000;
        let cfg = Cfg::new(vec![flow(0, false, None, false), flow(2, false, None, false)], base);
        assert!(!cfg.reachable_from_entry(1));
        assert!(cfg.reachable_from_entry(0));
    }

    #[test]
    fn the_same_outcomes_are_one_path() {
        let mut explorer = Explorer::default();
        explorer.record(0, &Steering::default(), &[(0, 2), (4, 6)]);
        explorer.record(1, &Steering::default(), &[(4, 6), (0, 2)]);
        explorer.record(2, &Steering::default(), &[(0, 6)]);
        assert_eq!(explorer.paths.len(), 2);
    }
}
