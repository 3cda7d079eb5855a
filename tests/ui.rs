//! Compile-time checks of the fiber DSL: every rule of `se3::fiber::rules` and every
//! validation of `#[fiber]` has a case in `tests/ui/fail/` whose committed `.stderr` is the
//! message a user sees; legal combinations, generic code included, are in `tests/ui/pass/`.
//! Regenerate with `TRYBUILD=overwrite cargo test --test ui` and read the diff.
//!
//! One `TestCases` run: trybuild builds the dependencies once for all cases.

#[test]
fn fiber_rules_reject_illegal_and_accept_legal_code() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
