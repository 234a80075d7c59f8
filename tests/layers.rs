//! The floors of the crate, enforced. Each folder under `src/` is a floor and may only
//! name the floors below it:
//!
//! - the sans-IO core, `proto` < `node` < `discovery` < `client`, and `exit` beside
//!   them, above `node`: each names only the core folders below it (`exit` is a leaf
//!   no other core folder names), and never `config`, `runtime`, `sys`, an OS or async
//!   crate (tokio, nix, socket2, quinn-udp, tun-rs, rtnetlink, futures), a socket, the
//!   clock, an entropy source, files, the environment or the process: time and
//!   randomness are inputs;
//! - `config` (TOML into the core's settings) never names `runtime`, `sys` or an OS crate;
//! - `sys` (what touches the kernel) lies below `runtime` and never names it or `node`;
//! - `main.rs` is the CLI: it calls `runtime` commands and never drives the protocol;
//! - `files.rs` (atomic file writes, for `config`, `sys` and `runtime`) names no
//!   other module of the crate.
//!
//! Every `.rs` file under a folder is read, except sibling `tests.rs` files (and the
//! `tests/` folders of their submodules) and the inline `#[cfg(test)]` module at the
//! bottom of a file; comments and string literals are not code. Built by cargo, or alone: `rustc --edition 2021 --test tests/layers.rs`.

use std::fs;
use std::path::{Path, PathBuf};

/// One row of the rules: what a folder (or file) under `src/` must not name.
struct Rule {
    scope: &'static str,
    /// For a core floor, the core folders it may name (`crate::<folder>`); any other
    /// core folder is a floor violation. `None`: not a core floor.
    may_name: Option<&'static [&'static str]>,
    must_not_name: &'static [&'static str],
}

const CORE: &[&str] = &["proto", "node", "exit", "discovery", "client"];

/// Names starting with an identifier must start on a word boundary, and names ending
/// with one must end on a boundary: `nix::` does not match `unix::`, nor
/// `crate::exit` match `crate::exit_x`.
#[rustfmt::skip]
const CORE_MUST_NOT: &[&str] = &[
    // the floors above the core
    "crate::runtime", "crate::sys", "crate::config",
    // OS and async crates
    "tokio::", "nix::", "socket2::", "quinn_udp::", "tun_rs::", "rtnetlink::", "futures::",
    // sockets (std's and tokio's alike)
    "UdpSocket", "TcpStream", "TcpListener",
    // the clock (`elapsed` reads it too)
    "Instant::now", "SystemTime::now", ".elapsed()",
    // entropy. `ChaCha20Rng::from_seed(seed)` with a seed drawn from the caller's RNG is
    // deterministic, not an entropy source, and stays allowed; so is a snow builder
    // `with_resolver` a seeded one. `snow::Builder::new` draws from the OS.
    "OsRng", "thread_rng", "from_entropy", "from_os_rng", "getrandom", "rand::random",
    "SystemRandom", "Builder::new",
    // name resolution is I/O
    "to_socket_addrs", "lookup_host",
    // files, environment, process and threads belong to config and runtime
    "crate::files", "tempfile::", "std::fs", "std::env", "std::process", "std::os", "std::thread",
];

#[rustfmt::skip]
const CONFIG_MUST_NOT: &[&str] = &[
    "crate::runtime", "crate::sys",
    "tokio::", "nix::", "socket2::", "quinn_udp::", "tun_rs::", "rtnetlink::", "futures::",
];

/// The CLI calls runtime commands; the protocol is driven in `runtime`.
#[rustfmt::skip]
const MAIN_MUST_NOT: &[&str] = &[
    "crate::node", "anonnet::node", "anonnet::proto::wire", "anonnet::runtime::driver",
];

#[rustfmt::skip]
const RULES: &[Rule] = &[
    Rule { scope: "proto",     may_name: Some(&[]),                                must_not_name: CORE_MUST_NOT },
    Rule { scope: "node",      may_name: Some(&["proto"]),                         must_not_name: CORE_MUST_NOT },
    Rule { scope: "exit",      may_name: Some(&["proto", "node"]),                 must_not_name: CORE_MUST_NOT },
    Rule { scope: "discovery", may_name: Some(&["proto", "node"]),                 must_not_name: CORE_MUST_NOT },
    Rule { scope: "client",    may_name: Some(&["proto", "node", "discovery"]),    must_not_name: CORE_MUST_NOT },
    Rule { scope: "config",    may_name: None, must_not_name: CONFIG_MUST_NOT },
    Rule { scope: "sys",       may_name: None, must_not_name: &["crate::runtime", "crate::node"] },
    Rule { scope: "main.rs",   may_name: None, must_not_name: MAIN_MUST_NOT },
    Rule { scope: "files.rs",  may_name: None, must_not_name: &["crate::"] },
];

/// The `crate::<folder>` names a core floor may not use: the core folders above it.
fn floors_above(rule: &Rule) -> Vec<String> {
    let may = rule.may_name.unwrap_or(CORE);
    let above = CORE
        .iter()
        .filter(|f| **f != rule.scope && !may.contains(f));
    above.map(|f| format!("crate::{f}")).collect()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The index just past the first `pat` in `c` at or after `from`, or the end.
fn after(c: &[char], from: usize, pat: &str) -> usize {
    let pat: Vec<char> = pat.chars().collect();
    let found = (from..c.len()).find(|&j| c[j..].starts_with(&pat));
    found.map_or(c.len(), |j| j + pat.len())
}

/// `src` with comments (`//`, `///`, `//!`, `/* */` unnested) and string and char
/// literals (with escapes, raw `r#"..."#`) turned into spaces, newlines kept so line
/// numbers hold. A `'` opens a char literal only as `'x'` or `'\..'`; else a lifetime.
fn blank(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let at = |pat: &str| c[i..].starts_with(&pat.chars().collect::<Vec<_>>());
        let free = |k: usize| !i.checked_sub(k).is_some_and(|p| is_ident(c[p]));
        let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
        let raw = at("r")
            && c.get(i + 1 + hashes) == Some(&'"')
            && (free(1) || c[i - 1] == 'b' && free(2));
        let end = if at("//") {
            after(&c, i, "\n")
        } else if at("/*") {
            after(&c, i + 2, "*/")
        } else if raw {
            after(&c, i + 2 + hashes, &format!("\"{}", "#".repeat(hashes)))
        } else if at("\"") {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            (j + 1).min(c.len())
        } else if at("'\\") {
            after(&c, i + 3, "'")
        } else if at("'") && c.get(i + 2) == Some(&'\'') {
            i + 3
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        out.extend(
            c[i..end]
                .iter()
                .map(|&x| if x == '\n' { '\n' } else { ' ' }),
        );
        i = end;
    }
    out
}

/// The tree of a `use` (or `extern crate`) statement, visibility removed.
fn use_tree(stmt: &str) -> Option<&str> {
    let s = match stmt.strip_prefix("pub") {
        Some(_) => stmt.split_once(' ').map_or(stmt, |(_, rest)| rest),
        None => stmt,
    };
    s.strip_prefix("use ")
        .or_else(|| s.strip_prefix("extern crate "))
}

/// `a::{b, c::{d as e}}` into `a::b::` and `a::c::d::` (the trailing `::` makes a
/// plain `use nix;` read as the path root `nix::`).
fn flatten(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let leaf = tree.split(" as ").next().unwrap_or(tree).trim();
        out.push(format!("{prefix}{leaf}::"));
        return;
    };
    let prefix = format!("{prefix}{}", tree[..open].trim());
    let body = tree[open + 1..].trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    let (mut depth, mut from) = (0, 0);
    for (at, ch) in body.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                flatten(&prefix, &body[from..at], out);
                from = at + 1;
            }
            _ => {}
        }
    }
    flatten(&prefix, &body[from..], out);
}

/// The code of one file (path relative to `src/`): (line, text to match, text to show).
/// A top-level `#[cfg(test)]` skips the item it gates: `mod x;`, or an item up to the
/// end of its braces (an inline test module, a test-only function); the code after
/// it is read again. A `use` is read
/// whole, across lines, with its braces flattened; `super::` chains that climb to the
/// crate root read as `crate::`.
fn code_lines(rel: &str, src: &str) -> Vec<(usize, String, String)> {
    // `super::` once per folder climbs to the root (`src/main.rs` has no `super`).
    let depth = rel.split('/').count() - usize::from(rel.ends_with("/mod.rs"));
    let root = "super::".repeat(depth.max(1));
    let blanked = blank(src);
    let code: Vec<String> = blanked
        .lines()
        .map(|l| l.replace(&root, "crate::"))
        .collect();
    let shown: Vec<&str> = src.lines().collect();
    let (mut out, mut n) = (Vec::new(), 0);
    while n < code.len() {
        if code[n].trim_end() == "#[cfg(test)]" {
            n = end_of_item(&code, n + 1);
            continue;
        }
        let start = n;
        let mut stmt = code[n].trim().to_string();
        if use_tree(&stmt).is_some() {
            while !stmt.contains(';') && n + 1 < code.len() {
                n += 1;
                stmt = format!("{stmt} {}", code[n].trim());
            }
        }
        let matched = match use_tree(&stmt) {
            Some(tree) => {
                let (tree, rest) = tree.split_once(';').unwrap_or((tree, ""));
                let mut paths = Vec::new();
                flatten("", tree, &mut paths);
                format!("{} {rest}", paths.join(" "))
            }
            None => stmt.clone(),
        };
        if !stmt.is_empty() {
            let text: Vec<&str> = shown[start..=n].iter().map(|l| l.trim()).collect();
            out.push((start + 1, matched, text.join(" ")));
        }
        n += 1;
    }
    out
}

/// The line after the item that starts at line `from` of blanked `code`: after its
/// `;` if that comes before any `{`, else after the `}` that balances its first `{`.
fn end_of_item(code: &[String], from: usize) -> usize {
    let mut depth = 0usize;
    for (n, line) in code.iter().enumerate().skip(from) {
        for ch in line.chars() {
            match ch {
                ';' if depth == 0 => return n + 1,
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return n + 1;
                    }
                }
                _ => {}
            }
        }
    }
    code.len()
}

/// Whether `code` holds `name` on word boundaries.
fn names(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        (!name.starts_with(is_ident) || !before.is_some_and(is_ident))
            && (!name.ends_with(is_ident) || !after.is_some_and(is_ident))
    })
}

/// `src/<rel>:<line>: <text>  [names]` for every line of `src` that names a forbidden name.
fn offenses(rel: &str, src: &str, forbidden: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (line, code, text) in code_lines(rel, src) {
        let hit: Vec<&str> = forbidden
            .iter()
            .filter(|f| names(&code, f))
            .map(String::as_str)
            .collect();
        if !hit.is_empty() {
            found.push(format!("src/{rel}:{line}: {text}  [{}]", hit.join(", ")));
        }
    }
    found
}

fn src_dir() -> PathBuf {
    let src = Path::new(option_env!("CARGO_MANIFEST_DIR").unwrap_or(".")).join("src");
    assert!(
        src.join("lib.rs").is_file(),
        "no crate at {}: run from the crate root",
        src.display()
    );
    src
}

/// Every `.rs` file of a scope except test modules (`tests.rs` and the `tests/` folder
/// of its submodules beside it), as (path relative to `src/`, text).
fn sources(scope: &str) -> Vec<(String, String)> {
    let src = src_dir();
    let (mut todo, mut files) = (vec![src.join(scope)], Vec::new());
    while let Some(path) = todo.pop() {
        let test_module = path.ends_with("tests") && path.with_extension("rs").is_file();
        if path.is_dir() && test_module {
            continue;
        }
        if path.is_dir() {
            let entries = fs::read_dir(&path).expect("read a source folder");
            todo.extend(entries.map(|e| e.expect("read a folder entry").path()));
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
            let rel = path
                .strip_prefix(&src)
                .expect("under src/")
                .to_string_lossy()
                .replace('\\', "/");
            files.push((rel, fs::read_to_string(&path).expect("read a source file")));
        }
    }
    assert!(
        !files.is_empty(),
        "no source files under src/{scope}: update tests/layers.rs"
    );
    files.sort();
    files
}

fn must_not(rule: &Rule) -> Vec<String> {
    rule.must_not_name.iter().map(ToString::to_string).collect()
}

/// Checks the rows for `scopes` against the names `forbidden` gives for each.
fn check(scopes: &[&str], forbidden: fn(&Rule) -> Vec<String>) {
    let mut found = Vec::new();
    for rule in RULES.iter().filter(|r| scopes.contains(&r.scope)) {
        for (rel, text) in sources(rule.scope) {
            found.extend(offenses(&rel, &text, &forbidden(rule)));
        }
    }
    let found = found.join("\n  ");
    assert!(
        found.is_empty(),
        "floors broken (see tests/layers.rs):\n  {found}\n"
    );
}

/// What under `src/` has no rule, on purpose: the crate root and the runtime, which
/// may name every floor.
const UNRULED: &[&str] = &["lib.rs", "runtime"];

/// A new folder (or file) at the top of `src/` gets a rule or is named in `UNRULED`:
/// nothing escapes the checks by being new.
#[test]
fn every_top_level_room_has_a_rule() {
    let mut unknown = Vec::new();
    for entry in fs::read_dir(src_dir()).expect("read src/") {
        let name = entry
            .expect("an entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let ruled = RULES.iter().any(|r| r.scope == name) || UNRULED.contains(&name.as_str());
        if !ruled {
            unknown.push(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "src/ entries without a rule in tests/layers.rs: {unknown:?}"
    );
}

#[test]
fn core_names_no_upper_floor_os_crate_socket_clock_or_entropy() {
    check(CORE, must_not);
}

#[test]
fn core_floors_only_name_the_floors_below() {
    check(CORE, floors_above);
}

#[test]
fn config_names_no_runtime_sys_or_os_crate() {
    check(&["config"], must_not);
}

#[test]
fn sys_names_neither_runtime_nor_node() {
    check(&["sys"], must_not);
}

#[test]
fn main_is_cli_only() {
    check(&["main.rs"], must_not);
}

#[test]
fn files_is_a_leaf() {
    check(&["files.rs"], must_not);
}

/// The checker itself, on in-memory sources: the offending lines of `src` at `rel`.
fn flagged(rel: &str, src: &str) -> Vec<String> {
    let scope = rel.split('/').next().unwrap_or(rel);
    let rule = RULES
        .iter()
        .find(|r| r.scope == scope)
        .expect("a rule for the scope");
    let mut forbidden = must_not(rule);
    forbidden.extend(floors_above(rule));
    offenses(rel, src, &forbidden)
}

/// (file under `src/`, source, offending lines the checker must report).
#[rustfmt::skip]
const CASES: &[(&str, &str, usize)] = &[
    // forbidden names, inline or imported
    ("proto/x.rs", "fn f() {\n    let t = Instant::now();\n}\n", 1),
    ("exit/x.rs", "let d = t0.elapsed();", 1),
    ("node/mod.rs", "let d: crate::runtime::driver::Driver;", 1),
    ("node/mod.rs", "use nix;", 1),
    ("client/x.rs", "let r = OsRng;\nlet s = rand::random::<u8>();", 2),
    ("config/mod.rs", "use crate::sys::netlink;", 1),
    ("sys/nft.rs", "use crate::runtime::daemon;", 1),
    ("main.rs", "use anonnet::{config, node::Node};", 1),
    ("proto/x.rs", "crate::files::write_atomic(p, b);", 1),
    ("files.rs", "use crate::proto::wire;", 1),
    // the floor order
    ("node/mod.rs", "use crate::client::flows;", 1),
    ("node/mod.rs", "use crate::proto::wire::MAX_PAYLOAD;", 0),
    ("client/x.rs", "use crate::discovery::Candidate;\nuse crate::proto::ip;", 0),
    // the exit is a leaf: no other core floor names it
    ("client/x.rs", "use crate::exit::policy;", 1),
    ("discovery/x.rs", "let s: crate::exit::Exit;", 1),
    ("node/mod.rs", "use super::runtime::Driver;", 1),
    ("discovery/store.rs", "use super::*;\nuse super::super::proto::wire;", 0),
    // allowed: seeded RNGs, look-alike names, files in config
    ("proto/x.rs", "let r = ChaCha20Rng::from_seed(seed);", 0),
    ("exit/x.rs", "let n = unix_now(); let m = nix_like::x; use std::os_str;", 0),
    ("node/x.rs", "use crate::client_side; let s = my_tokio::spawn;", 0),
    ("config/mod.rs", "let t = std::fs::read_to_string(path);", 0),
    // comments, strings and test modules are not code...
    ("node/mod.rs", "// tokio::spawn and Instant::now()", 0),
    ("node/mod.rs", "//! the runtime uses tokio::net::UdpSocket", 0),
    ("node/mod.rs", "/// see [`crate::runtime::driver`]", 0),
    ("node/mod.rs", "let x = 1; // Instant::now() is the caller's", 0),
    ("node/mod.rs", "/* OsRng\n   tokio:: */ let y = 2;", 0),
    ("node/mod.rs", "let s = \"tokio::spawn\"; let r = r#\"std::fs \"# ;", 0),
    ("node/mod.rs", "fn f() {}\n#[cfg(test)]\nmod tests {\n    use tokio::net::UdpSocket;\n}\n", 0),
    // ...but `//` and `"` inside literals hide nothing, nor does `#[cfg(test)] mod x;`
    ("node/mod.rs", "let u = \"http://x\"; let t = Instant::now();", 1),
    ("node/mod.rs", "let q = '\"'; let t = Instant::now(); let e = \"\";", 1),
    ("node/mod.rs", "fn f<'a>(x: &'a str) { let t = Instant::now(); }", 1),
    ("node/mod.rs", "#[cfg(test)]\nmod tests;\nlet t = Instant::now();", 1),
    // a test item in the middle hides only itself
    ("node/mod.rs", "#[cfg(test)]\nfn t() {\n    let a = Instant::now();\n}\nlet b = Instant::now();", 1),
    ("node/mod.rs", "#[cfg(test)]\nmod t {\n    fn f() { if x { y(); } }\n}\nuse tokio::net;", 1),
    // OS entropy through a library, and name resolution
    ("proto/x.rs", "let b = snow::Builder::new(params);", 1),
    ("proto/x.rs", "let b = snow::Builder::with_resolver(params, seeded);", 0),
    ("node/x.rs", "let r = ring::rand::SystemRandom::new();", 1),
    ("discovery/x.rs", "let a = \"h:1\".to_socket_addrs();", 1),
];

#[test]
fn checker_flags_exactly_the_offending_lines() {
    for (rel, src, want) in CASES {
        let hits = flagged(rel, src);
        assert_eq!(hits.len(), *want, "src/{rel}: {src:?}: {hits:?}");
    }
}

#[test]
fn checker_reports_file_line_text_and_names() {
    let hits = flagged("node/mod.rs", "use tokio::net::UdpSocket;\n");
    let want = "src/node/mod.rs:1: use tokio::net::UdpSocket;  [tokio::, UdpSocket]";
    assert_eq!(hits, [want]);
    let src = "use std::{fmt, fs::File};\nuse crate::{\n    proto::wire,\n    client::flows,\n};\n";
    let hits = flagged("node/mod.rs", src).join("\n");
    let want = "src/node/mod.rs:1: use std::{fmt, fs::File};  [std::fs]\n\
        src/node/mod.rs:2: use crate::{ proto::wire, client::flows, };  [crate::client]";
    assert_eq!(
        hits, want,
        "a grouped `use` is read whole, from its first line"
    );
}
