//! Query tests: read-only SQL over the `records` view, against a real server process.

mod common;

use std::time::Duration;

use common::*;
use ringbase_client::{
    Client, Error, ErrorCode, FieldFilter, QueryOptions, RingSizes, SqlValue, ValueKind,
};

fn server(tag: &str) -> (TempDir, ServerProc) {
    let rt = TempDir::new(tag);
    let srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), tag, &[]);
    (rt, srv)
}

/// The server error code of a failed call.
fn code_of(r: Result<impl std::fmt::Debug, Error>) -> (ErrorCode, String) {
    match r {
        Err(Error::Server { code, message, .. }) => (code.expect("a known code"), message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

#[test]
fn parameters_every_type_and_the_records_view() {
    let (_rt, srv) = server("q-view");
    let mut c = srv.connect();
    let v1 = c
        .put_json("enemy:1", r#"{"type":"enemy","hp":30}"#)
        .unwrap();
    c.put_json("enemy:2", r#"{"type":"enemy","hp":50.5}"#)
        .unwrap();
    c.put_json("ally:1", r#"{"type":"ally","hp":10}"#).unwrap();
    c.put("blob", &[0, 255, 7], ValueKind::Bytes).unwrap();
    c.put_json("gone", "1").unwrap();
    c.delete("gone").unwrap();

    // Every SQLite type comes back typed, with column names.
    let r = c
        .query(
            "SELECT NULL AS n, 42 AS i, 2.5 AS r, 'txt' AS t, x'00ff' AS b",
            &[],
        )
        .unwrap();
    assert_eq!(r.columns, ["n", "i", "r", "t", "b"]);
    assert_eq!(
        r.rows,
        [vec![
            SqlValue::Null,
            SqlValue::Integer(42),
            SqlValue::Real(2.5),
            text("txt"),
            SqlValue::Blob(vec![0, 255]),
        ]]
    );
    assert!(!r.truncated);

    // Parameters of every type bind and come back unchanged (?NNN and ? both work).
    let params = [
        SqlValue::Null,
        SqlValue::Integer(i64::MIN),
        SqlValue::Real(-0.125),
        text("é ✓"),
        SqlValue::Blob(vec![1, 2, 3]),
    ];
    let r = c
        .query("SELECT ?1, ?2, ?3, ?4, ?5, typeof(?5)", &params)
        .unwrap();
    let mut want = params.to_vec();
    want.push(text("blob"));
    assert_eq!(r.rows, [want]);

    // The view: live records only, JSON values as text the JSON functions read.
    let r = c
        .query(
            "SELECT key, kind, json_extract(value, '$.hp') AS hp FROM records
             WHERE json_extract(value, '$.type') = ?1 ORDER BY key",
            &[text("enemy")],
        )
        .unwrap();
    assert_eq!(r.columns, ["key", "kind", "hp"]);
    assert_eq!(
        r.rows,
        [
            vec![text("enemy:1"), text("json"), SqlValue::Integer(30)],
            vec![text("enemy:2"), text("json"), SqlValue::Real(50.5)],
        ]
    );
    let r = c
        .query("SELECT key FROM records ORDER BY key", &[])
        .unwrap();
    let keys: Vec<_> = r.rows.iter().map(|row| row[0].clone()).collect();
    assert_eq!(
        keys,
        [
            text("ally:1"),
            text("blob"),
            text("enemy:1"),
            text("enemy:2")
        ],
        "the deleted record is not in the view"
    );
    let r = c
        .query(
            "SELECT kind, value, bytes, typeof(bytes) FROM records WHERE key = 'blob'",
            &[],
        )
        .unwrap();
    assert_eq!(
        r.rows,
        [vec![
            text("bytes"),
            SqlValue::Null,
            SqlValue::Blob(vec![0, 255, 7]),
            text("blob")
        ]]
    );
    let r = c
        .query("SELECT value, bytes FROM records WHERE key = 'ally:1'", &[])
        .unwrap();
    assert_eq!(
        r.rows,
        [vec![text(r#"{"type":"ally","hp":10}"#), SqlValue::Null]]
    );

    // The same text again (a cached statement) with other parameters.
    for (k, hp) in [("enemy:1", 30), ("ally:1", 10), ("enemy:1", 30)] {
        let r = c
            .query(
                "SELECT json_extract(value, '$.hp') FROM records WHERE key = ?1",
                &[text(k)],
            )
            .unwrap();
        assert_eq!(r.rows, [vec![SqlValue::Integer(hp)]], "{k}");
    }
    // A refused text stays refused when sent again.
    for _ in 0..2 {
        assert_eq!(
            code_of(c.query("SELECT * FROM main.records", &[])).0,
            ErrorCode::ReadOnly
        );
    }

    // Version fields agree with the write's version.
    let r = c
        .query(
            "SELECT hlc, replica, seq, updated_at FROM records WHERE key = ?",
            &[text("enemy:1")],
        )
        .unwrap();
    let hex: String = v1.replica.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.rows[0][0], SqlValue::Integer(v1.hlc as i64));
    assert_eq!(r.rows[0][1], text(&hex));
    assert_eq!(r.rows[0][2], SqlValue::Integer(v1.seq as i64));
    let SqlValue::Integer(updated_at) = r.rows[0][3] else {
        panic!("updated_at is an integer")
    };
    assert_eq!(
        updated_at as u64,
        c.get("enemy:1").unwrap().unwrap().updated_at_ms
    );

    // Read-your-writes: a query sees this session's pipelined writes before it.
    for i in 0..20 {
        c.send(&ringbase_client::Request::Put {
            key: format!("p:{i:02}"),
            value: b"{}".to_vec(),
            kind: ValueKind::Json,
        })
        .unwrap();
    }
    c.send(&ringbase_client::Request::Query {
        sql: "SELECT count(*) FROM records WHERE key LIKE 'p:%'".into(),
        params: vec![],
        max_rows: 0,
        timeout_ms: 0,
    })
    .unwrap();
    let mut last = None;
    for _ in 0..21 {
        last = Some(c.recv().unwrap().1);
    }
    match last.unwrap() {
        ringbase_client::Response::Rows(r) => assert_eq!(r.rows, [vec![SqlValue::Integer(20)]]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn writes_pragmas_and_other_tables_are_refused_and_change_nothing() {
    let (_rt, srv) = server("q-refuse");
    let mut c = srv.connect();
    c.put_json("k", r#"{"a":1}"#).unwrap();
    let refused = [
        ("INSERT INTO records(key) VALUES ('x')", "read-only"),
        ("DELETE FROM records", "read-only"),
        ("UPDATE records SET key = 'y'", "read-only"),
        ("CREATE TABLE t(x)", ""),
        ("CREATE TEMP TABLE t(x)", ""),
        ("DROP VIEW records", ""),
        ("PRAGMA query_only = 0", "PRAGMA"),
        ("PRAGMA table_info(records)", "PRAGMA"),
        ("ATTACH DATABASE '/tmp/ringbase-attack.db' AS a", "ATTACH"),
        ("BEGIN", "transaction"),
        ("SELECT * FROM main.records", "records view only"),
        ("SELECT * FROM meta", "records view only"),
        ("SELECT * FROM sqlite_master", "records view only"),
        (
            "WITH x AS (SELECT 1) INSERT INTO records(key) SELECT 'z' FROM x",
            "read-only",
        ),
    ];
    for (sql, needle) in refused {
        let (code, msg) = code_of(c.query(sql, &[]));
        assert_eq!(code, ErrorCode::ReadOnly, "{sql}: {msg}");
        assert!(msg.contains(needle), "{sql}: {msg}");
    }
    assert!(!std::path::Path::new("/tmp/ringbase-attack.db").exists());
    // Nothing changed, and the session goes on.
    assert_eq!(c.count(None).unwrap(), 1);
    let r = c.query("SELECT key, value FROM records", &[]).unwrap();
    assert_eq!(r.rows, [vec![text("k"), text(r#"{"a":1}"#)]]);
}

#[test]
fn bad_statements_get_clear_errors() {
    let (_rt, srv) = server("q-bad");
    let mut c = srv.connect();
    let (code, msg) = code_of(c.query("SELEC key FROM records", &[]));
    assert_eq!(code, ErrorCode::InvalidQuery);
    assert!(msg.contains("syntax error"), "{msg}");
    let (code, msg) = code_of(c.query("SELECT nope FROM records", &[]));
    assert_eq!(code, ErrorCode::InvalidQuery);
    assert!(msg.contains("no such column: nope"), "{msg}");
    let (code, msg) = code_of(c.query("SELECT * FROM players", &[]));
    assert_eq!(code, ErrorCode::InvalidQuery);
    assert!(msg.contains("no such table: players"), "{msg}");
    let (code, msg) = code_of(c.query("SELECT ?1, ?2", &[text("one")]));
    assert_eq!(code, ErrorCode::InvalidQuery);
    assert!(msg.contains("2 parameter(s), 1 given"), "{msg}");
    let (code, msg) = code_of(c.query("SELECT 1; SELECT 2", &[]));
    assert_eq!(code, ErrorCode::InvalidQuery);
    assert!(msg.contains("more than one statement"), "{msg}");
    let (code, _) = code_of(c.query("", &[]));
    assert_eq!(code, ErrorCode::InvalidQuery);
    let (code, msg) = code_of(c.query("SELECT json_extract('{', '$.a')", &[]));
    assert_eq!(code, ErrorCode::InvalidQuery);
    assert!(msg.to_lowercase().contains("json"), "{msg}");
    // The session is still fine.
    assert_eq!(
        c.query("SELECT 1", &[]).unwrap().rows,
        [vec![SqlValue::Integer(1)]]
    );
}

#[test]
fn a_runaway_query_is_stopped_by_its_budget_and_others_go_on() {
    let (_rt, srv) = server("q-budget");
    let mut c = srv.connect();
    c.put_json("k", "1").unwrap();
    let forever =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
    let opts = QueryOptions {
        timeout: Duration::from_millis(300),
        ..QueryOptions::default()
    };
    let (code, msg) = watchdog(Duration::from_secs(60), move || {
        let r = code_of(c.query_with(forever, &[], opts));
        // The session goes on after the stopped query.
        assert_eq!(c.get("k").unwrap().unwrap().value, b"1");
        r
    });
    assert_eq!(code, ErrorCode::Budget, "{msg}");
    assert!(msg.contains("time budget of 300 ms"), "{msg}");

    // While one client's query runs its whole (default, 2 s) budget, another client's
    // reads and writes are served.
    let mut busy = srv.connect();
    let runner = std::thread::spawn(move || code_of(busy.query(forever, &[])).0);
    let mut other = srv.connect();
    for i in 0..200 {
        other.put_json(&format!("o{i}"), "2").unwrap();
        assert!(other.get(&format!("o{i}")).unwrap().is_some());
    }
    assert_eq!(
        watchdog(Duration::from_secs(60), move || runner.join().unwrap()),
        ErrorCode::Budget
    );
}

#[test]
fn row_limit_frame_limit_and_length_limit() {
    let (_rt, srv) = server("q-limits");
    let mut c = srv.connect();
    let batch: Vec<_> = (0..1500)
        .map(|i| ringbase_client::BatchOp::Put {
            key: format!("k{i:04}"),
            value: format!("{{\"i\":{i}}}").into_bytes(),
            kind: ValueKind::Json,
        })
        .collect();
    c.batch(batch).unwrap();
    // Default row limit 1000; truncated says there was more.
    let r = c
        .query("SELECT key FROM records ORDER BY key", &[])
        .unwrap();
    assert_eq!(r.rows.len(), 1000);
    assert!(r.truncated);
    let r = c
        .query_with(
            "SELECT key FROM records ORDER BY key",
            &[],
            QueryOptions {
                max_rows: 10,
                ..QueryOptions::default()
            },
        )
        .unwrap();
    assert_eq!(r.rows.len(), 10);
    assert!(r.truncated);
    assert_eq!(r.rows[9], [text("k0009")]);
    let r = c
        .query_with(
            "SELECT key FROM records",
            &[],
            QueryOptions {
                max_rows: 5000,
                ..QueryOptions::default()
            },
        )
        .unwrap();
    assert_eq!(r.rows.len(), 1500);
    assert!(!r.truncated);

    // Small rings: the result is cut at what fits in one response frame.
    let mut opts = srv.options();
    opts.rings = RingSizes {
        request: 64 * 1024,
        response: 64 * 1024,
        event: 64 * 1024,
    };
    let mut small = Client::connect_with(opts).unwrap();
    let max = small.max_payload();
    let r = small
        .query_with(
            "SELECT key, zeroblob(1000) FROM records",
            &[],
            QueryOptions {
                max_rows: 5000,
                ..QueryOptions::default()
            },
        )
        .unwrap();
    assert!(r.truncated);
    assert!(!r.rows.is_empty() && (r.rows.len() as u64) * 1000 < max);
    // No string or blob larger than the frame is ever built (no memory blow-up).
    for sql in [
        format!("SELECT zeroblob({})", max * 2),
        "SELECT randomblob(1000000000)".to_string(),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
         SELECT length(group_concat(hex(zeroblob(100)))) FROM n"
            .to_string(),
    ] {
        let (code, msg) = code_of(small.query(&sql, &[]));
        assert_eq!(code, ErrorCode::TooLarge, "{sql}: {msg}");
    }
    assert_eq!(small.query("SELECT 1", &[]).unwrap().rows.len(), 1);
}

#[test]
fn cli_query_prints_json_lines_or_a_table() {
    let (_rt, srv) = server("q-cli");
    let mut c = srv.connect();
    c.put_json("e:1", r#"{"type":"enemy","hp":3}"#).unwrap();
    c.put_json("e:2", r#"{"type":"enemy","hp":4}"#).unwrap();
    c.put("b", &[1, 2], ValueKind::Bytes).unwrap();
    let cli = |args: &[&str]| srv.cli(&[&["query"], args].concat());
    let (code, out, _) = cli(&[
        "SELECT key, json_extract(value, '$.hp') AS hp FROM records WHERE json_extract(value, '$.type') = ? ORDER BY key",
        "--params",
        r#"["enemy"]"#,
    ]);
    assert_eq!(code, Some(0));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            serde_json::json!({"key": "e:1", "hp": 3}),
            serde_json::json!({"key": "e:2", "hp": 4})
        ]
    );
    let (code, out, _) = cli(&[
        "SELECT bytes FROM records WHERE key = ?",
        "--params",
        r#"["b"]"#,
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), r#"{"bytes":{"blob":"0102"}}"#);
    let (code, out, _) = cli(&[
        "SELECT key, kind FROM records ORDER BY key",
        "--format",
        "table",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "key | kind",
            "----+------",
            "b   | bytes",
            "e:1 | json",
            "e:2 | json"
        ]
    );
    let (code, out, err) = cli(&["SELECT key FROM records", "--max-rows", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1);
    assert!(err.contains("cut short"), "{err}");
    // A refused write: exit 2 with the server's message.
    let (code, _, err) = cli(&["DELETE FROM records"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("read-only"), "{err}");
    let (code, _, err) = cli(&["SELECT ?", "--params", "not json"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--params"), "{err}");
    assert_eq!(c.count(None).unwrap(), 3);
}

#[test]
fn list_where_filters_on_a_json_field_with_or_without_an_index() {
    let (rt, srv) = server("q-where");
    let mut c = srv.connect();
    for i in 0..120 {
        let t = ["enemy", "ally", "item"][i % 3];
        c.put_json(
            &format!("u:{i:03}"),
            &format!(r#"{{"type":"{t}","lvl":{}}}"#, i % 4),
        )
        .unwrap();
    }
    c.put("u:raw", b"not json", ValueKind::Bytes).unwrap();
    c.delete("u:000").unwrap();
    let pages = |c: &mut Client, f: &FieldFilter| {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = c.list_where("u:", after.as_deref(), 7, f).unwrap();
            keys.extend(page.records.iter().map(|r| r.key.clone()));
            match page.records.last() {
                Some(l) if page.more => after = Some(l.key.clone()),
                _ => break,
            }
        }
        keys
    };
    let enemy = FieldFilter {
        path: "$.type".into(),
        value: r#""enemy""#.into(),
    };
    let lvl2 = FieldFilter {
        path: "$.lvl".into(),
        value: "2".into(),
    };
    let want_enemy: Vec<String> = (3..120).step_by(3).map(|i| format!("u:{i:03}")).collect();
    let want_lvl2: Vec<String> = (2..120).step_by(4).map(|i| format!("u:{i:03}")).collect();
    assert_eq!(pages(&mut c, &enemy), want_enemy);
    assert_eq!(pages(&mut c, &lvl2), want_lvl2);
    assert!(c.create_index("$.type").unwrap());
    assert!(!c.create_index("$.type").unwrap());
    assert_eq!(c.status().unwrap().indexes, ["$.type"]);
    assert_eq!(pages(&mut c, &enemy), want_enemy);
    // The index follows later writes (this session's, seen at once).
    c.put_json("u:001", r#"{"type":"enemy"}"#).unwrap();
    let mut want = want_enemy.clone();
    want.insert(0, "u:001".into());
    assert_eq!(pages(&mut c, &enemy), want);
    // Bad paths and values: clear errors.
    for (path, value) in [
        ("type", r#""enemy""#),
        ("$.a b", "1"),
        ("$.type", "{}"),
        ("$.type", "enemy"),
    ] {
        let f = FieldFilter {
            path: path.into(),
            value: value.into(),
        };
        let (code, msg) = code_of(c.list_where("u:", None, 10, &f));
        assert_eq!(code, ErrorCode::InvalidQuery, "{path} {value}: {msg}");
    }
    let (code, _) = code_of(c.create_index("$"));
    assert_eq!(code, ErrorCode::InvalidQuery);

    // The CLI: list --where, index create/list/drop; the index survives a restart.
    let run = rt.path().join("run");
    let cli = |srv: &ServerProc, args: &[&str]| {
        let (code, out, _) = srv.cli(args);
        (code, out)
    };
    let (code, out) = cli(
        &srv,
        &[
            "list",
            "--prefix",
            "u:",
            "--where",
            "$.lvl = 2",
            "--limit",
            "3",
        ],
    );
    assert_eq!(code, Some(0));
    let keys = json_line_keys(&out);
    assert_eq!(keys, want_lvl2[..3]);
    assert_eq!(cli(&srv, &["index", "create", "$.lvl"]).0, Some(0));
    assert_eq!(cli(&srv, &["index", "list"]).1, "$.lvl\n$.type\n");
    drop(c);
    let mut srv = srv;
    srv.terminate();
    let srv = ServerProc::start(&run, &rt.path().join("data"), "q-where", &[]);
    let mut c = srv.connect();
    assert_eq!(c.status().unwrap().indexes, ["$.lvl", "$.type"]);
    assert_eq!(pages(&mut c, &lvl2), want_lvl2);
    let (code, out) = cli(&srv, &["index", "drop", "$.lvl"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"dropped\":true"), "{out}");
    assert_eq!(cli(&srv, &["index", "list"]).1, "$.type\n");
    assert_eq!(cli(&srv, &["list", "--where", "nonsense"]).0, Some(2));
}

#[test]
fn fulltext_search_follows_writes_at_once_in_bm25_order() {
    let (_rt, srv) = server("q-fts");
    let mut c = srv.connect();
    c.put_json(
        "m:1",
        r#"{"name":"Cave troll","lore":"lives under the bridge"}"#,
    )
    .unwrap();
    let (code, msg) = code_of(c.search("troll", 0));
    assert_eq!(code, ErrorCode::Unsupported);
    assert!(msg.contains("fulltext"), "{msg}");
    assert!(c.set_fulltext(true).unwrap());
    assert!(c.status().unwrap().fulltext);
    let keys = |c: &mut Client, text: &str| -> Vec<String> {
        c.search(text, 0)
            .unwrap()
            .into_iter()
            .map(|h| h.key)
            .collect()
    };
    assert_eq!(
        keys(&mut c, "troll"),
        ["m:1"],
        "existing records were indexed"
    );
    // bm25: more (and denser) matches rank higher; scores are best first.
    c.put_json("m:2", r#"{"lore":"troll troll troll"}"#)
        .unwrap();
    c.put_json(
        "m:3",
        r#"{"lore":["a long tale", "of many things", "and one troll"]}"#,
    )
    .unwrap();
    let hits = c.search("troll", 0).unwrap();
    assert_eq!(hits[0].key, "m:2");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(hits.len(), 3);
    assert!(hits[0].snippet.contains("[troll]"), "{}", hits[0].snippet);
    // Another client's writes and deletes show at once.
    let mut other = srv.connect();
    other.delete("m:2").unwrap();
    other
        .put_json("m:1", r#"{"name":"Bridge keeper"}"#)
        .unwrap();
    assert_eq!(keys(&mut c, "troll"), ["m:3"]);
    assert_eq!(keys(&mut c, "bridge keeper"), ["m:1"]);
    assert_eq!(c.search("troll", 1).unwrap().len(), 1);

    // The CLI.
    let (code, out, _) = srv.cli(&["search", "tale troll"]);
    assert_eq!(code, Some(0));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["key"], "m:3");
    assert!(line["score"].as_f64().unwrap() > 0.0);
    assert_eq!(srv.cli(&["fulltext", "off"]).0, Some(0));
    assert!(!c.status().unwrap().fulltext);
    assert_eq!(code_of(c.search("troll", 0)).0, ErrorCode::Unsupported);
}
