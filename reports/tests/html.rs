//! report.html: golden file, escaping of attacker-controlled text, the self-containment guarantees (CSP, no remote
//! loads), and a real headless browser (Chromium) that runs the page's script, dumps the DOM and takes a screenshot
//! checked for the verdict. `UPDATE_GOLDEN=1` rewrites the golden files.

mod common;

use std::path::PathBuf;

use common::{rich_record, with_trigger_search};
use trapdoor_reports::render::html;

fn golden(name: &str, actual: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    if expected != actual {
        let exp = String::from_utf8_lossy(&expected);
        let act = String::from_utf8_lossy(actual);
        let line = exp.lines().zip(act.lines()).position(|(a, b)| a != b).unwrap_or(exp.lines().count().min(act.lines().count()));
        panic!("{name} differs at line {}:\n  expected: {:?}\n  actual:   {:?}\n(UPDATE_GOLDEN=1 rewrites it)", line + 1, exp.lines().nth(line), act.lines().nth(line));
    }
}

#[test]
fn golden_files() {
    golden("report.html", &html::render(&rich_record()));
    golden("report-trigger-search.html", &html::render(&with_trigger_search(rich_record())));
}
