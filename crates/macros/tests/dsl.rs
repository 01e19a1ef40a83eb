//! The DSL's tests, one binary: compile-fail cases with their rustc output as goldens (trybuild)
//! and snapshots of the pretty-printed expansion of one kernel per method and one annotated
//! model (insta). The kernels' behaviour is tested where the training runtime is (`tests/it/dsl.rs`).

mod expand;

/// Every case under `tests/ui` fails to compile with exactly its `.stderr` (run with
/// `TRYBUILD=overwrite` after an intended change of a message, and read the diff).
#[test]
fn compile_errors_point_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
