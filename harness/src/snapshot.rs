//! Snapshot steps go through insta, so blessing works as everywhere else in the project:
//! `cargo insta review` (or `INSTA_UPDATE=always`) accepts a change, CI runs read-only
//! (`cargo insta test --check`, or `CI` set) and a mismatch fails the step with insta's diff.

use std::path::Path;

/// Compare `text` with `<dir>/<name>.snap`; `Err` carries a short description of the mismatch
/// (insta prints the full diff itself).
pub fn assert(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name, text));
    }));
    outcome.map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{} differs from {}/{name}.snap (run `cargo insta review`): {msg}", "the output", dir.display())
    })
}
