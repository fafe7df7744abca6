//! `docs/conformance.md` lists every MUST of RFC 6455 / RFC 7692 that binds a server, with the code that
//! enforces it and the test that proves it. This test checks each row: every `path::item` it names exists (a
//! function or item of that name in that file), so the table cannot cite code or tests that are gone.

use std::path::Path;

#[test]
fn every_row_names_code_and_tests_that_exist() {
    check_section("## Every MUST", 45);
    check_section("## HTTP/2 and RFC 8441", 30);
}

/// Checks the numbered table under `heading`: at least `min` rows, each naming code and tests that exist.
fn check_section(heading: &str, min: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/conformance.md")).unwrap();
    let start = doc.find(heading).expect("the MUST section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let rows: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("| ") && l.split('|').nth(1).is_some_and(|c| c.trim().parse::<u32>().is_ok()))
        .collect();
    assert!(rows.len() >= min, "{heading}: the table has {} rows", rows.len());
    let mut numbers = Vec::new();
    for row in &rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | # | requirement | enforced by | test |
        let (n, enforced, tests) = (cells[1], cells[3], cells[4]);
        numbers.push(n.parse::<u32>().unwrap());
        let refs = |cell: &str| -> Vec<(String, String)> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|r| r.split_once("::").map(|(p, i)| (p.to_string(), i.to_string())))
                .collect()
        };
        let code = refs(enforced);
        let tested = refs(tests);
        assert!(!code.is_empty(), "row {n} names no code: {row}");
        assert!(!tested.is_empty(), "row {n} names no test: {row}");
        for (path, item) in code.iter().chain(&tested) {
            let text = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("row {n}: {path}: {e}"));
            // `Type::method` names a method: its `fn` is what must exist.
            let item = item.rsplit("::").next().unwrap();
            let found =
                [format!("fn {item}("), format!("fn {item}<"), format!("struct {item}"), format!("const {item}")]
                    .iter()
                    .any(|p| text.contains(p.as_str()));
            assert!(found, "row {n}: {path} has no `{item}`");
        }
        for (path, item) in &tested {
            let text = std::fs::read_to_string(root.join(path)).unwrap();
            let at = text.find(&format!("fn {item}(")).unwrap();
            let before = &text[..at];
            let attr = before.rfind("#[test]").map(|i| before[i..].lines().count() <= 2).unwrap_or(false);
            assert!(attr, "row {n}: {path}::{item} is not a #[test]");
        }
    }
    let expected: Vec<u32> = (1..=rows.len() as u32).collect();
    assert_eq!(numbers, expected, "rows are numbered 1..n in order");
}
