//! `quorum eval`: suites of cases run against several targets through the front
//! door, with assertions, budgets, resume and reports. Faces only parse arguments
//! and print what these modules return.

pub mod check;
pub mod report;
pub mod run;
pub mod suite;

pub use check::{Assertion, Check, CheckResult};
pub use run::{CaseOutcome, Cell, EvalOptions, Progress, RunAnswer, RunEnd};
pub use suite::{Suite, SuiteError};
