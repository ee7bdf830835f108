//! Recipes read from the docs themselves: a fenced block in docs/*.md (or README.md) preceded by
//! `<!-- recipe: NAME (tests/FILE.rs::TEST) -->` is what the named test runs, so a doc change that
//! breaks a recipe breaks the test.

use std::path::Path;

/// The contents of the fenced block that follows the marker `<!-- recipe: NAME …-->` in `doc`
/// (a path relative to the repository, e.g. "docs/issuers.md"). Panics, naming the doc and the
/// recipe, when the marker or its block is missing: a test must not run a recipe it cannot find.
pub fn recipe(doc: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let marker = format!("<!-- recipe: {name} ");
    let start = text
        .find(&marker)
        .or_else(|| text.find(&format!("<!-- recipe: {name}-->")))
        .unwrap_or_else(|| panic!("{doc} has no `<!-- recipe: {name} (…) -->` marker"));
    let after = &text[start..];
    let mut lines = after.lines().skip(1).skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default().trim_start();
    assert!(fence.starts_with("```"), "{doc}: recipe {name}: the marker is not followed by a fenced block");
    let body: Vec<&str> = lines.take_while(|l| !l.trim_start().starts_with("```")).collect();
    assert!(!body.is_empty(), "{doc}: recipe {name} is empty");
    body.join("\n") + "\n"
}

/// Every recipe name marked in `doc`, with the test the marker names.
pub fn recipes_in(doc: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("<!-- recipe: ")?.strip_suffix("-->"))
        .map(|rest| {
            let rest = rest.trim();
            let (name, test) = rest.split_once(' ').unwrap_or((rest, ""));
            (name.to_string(), test.trim_matches(|c| c == '(' || c == ')').to_string())
        })
        .collect()
}
