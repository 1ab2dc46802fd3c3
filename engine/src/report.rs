//! Where a build reports to.

use rbuild_solver::progress::Event;

/// Where the engine reports: the solver's progress events (the export is one
/// more vertex after the graph's) and the planner's warnings. The caller
/// renders them.
pub trait Reporter {
    fn event(&mut self, ev: &Event);
    /// A warning from planning, before anything runs.
    fn warning(&mut self, message: &str);
    /// Progress of the pull of a base image (`FROM` of an image not in the
    /// store, or `--pull`), during planning.
    fn pull_event(&mut self, reference: &str, event: &crate::transfer::TransferEvent) {
        let _ = (reference, event);
    }

    /// A line of `--explain-cache`, after the build.
    fn explain(&mut self, line: &str) {
        self.warning(line);
    }

    /// A line about the export for the user (`squashed 14 layers: ...`).
    fn note(&mut self, line: &str) {
        self.warning(line);
    }
}
