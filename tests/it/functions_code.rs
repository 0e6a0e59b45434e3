//! code-execution seen from the outside: Python, JavaScript and TypeScript runs, the sandbox's
//! bounds (time, memory, output) and walls (files, modules, network, processes), the stored
//! `code_executions` rows under RLS, and the request errors.

use crate::common;

use std::time::{Duration, Instant};

use common::{TestServer, ANON_KEY};
use serde_json::{json, Value};

async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut oxibase::Config)) -> TestServer {
    TestServer::start_with(|cfg| {
        // The test binary is not oxibase: start the real binary as the sandbox.
        cfg.functions.code_sandbox_exe = Some(env!("CARGO_BIN_EXE_oxibase").into());
        // Runs that set no timeout get this much: the debug build's interpreter importing
        // half the standard library on a loaded 2-core machine can take more than the
        // default 5 s. Tests of timeouts set their own.
        cfg.functions.code_timeout_ms = 30_000;
        tweak(cfg);
    })
    .await
}

async fn post(t: &TestServer, token: &str, body: &Value) -> common::reqwest_like::Response {
    post_raw(t, token, body.to_string()).await
}

async fn post_raw(t: &TestServer, token: &str, body: String) -> common::reqwest_like::Response {
    t.http
        .send(
            "POST",
            &format!("{}/functions/v1/code-execution", t.url),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("apikey", ANON_KEY),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
}

/// A run that must answer 200: its JSON.
async fn run(t: &TestServer, token: &str, language: &str, code: &str, extra: Value) -> Value {
    let mut body = json!({"language": language, "code": code});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let r = post(t, token, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["id"].as_str().is_some_and(|s| s.len() == 36), "{v}");
    assert!(v["duration_ms"].as_u64().is_some(), "{v}");
    v
}

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

fn assert_error(r: &common::reqwest_like::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn python_runs_with_stdlib_stdin_and_errors() {
    let t = server().await;
    let (_, tok) = t.user().await;
    let v = run(&t, &tok, "python", "print('hello', 6 * 7)", json!({})).await;
    assert_eq!(
        (status(&v), v["stdout"].as_str(), v["exit_code"].as_i64()),
        ("success", Some("hello 42\n"), Some(0)),
        "{v}"
    );
    assert_eq!(v["stderr"], "");
    // stdin: input() and sys.stdin.
    let v = run(
        &t,
        &tok,
        "python",
        "name = input()\nimport sys\nrest = sys.stdin.read()\nprint('hi', name, rest.split())",
        json!({"stdin": "Ada\n1 2\n3\n"}),
    )
    .await;
    assert_eq!(v["stdout"], "hi Ada ['1', '2', '3']\n", "{v}");
    let v = run(&t, &tok, "python", "input()", json!({})).await;
    assert_eq!(status(&v), "error");
    assert!(v["stderr"].as_str().unwrap().contains("EOFError"), "{v}");
    // The standard library modules a snippet uses.
    let v = run(
        &t,
        &tok,
        "python",
        "import math, json, re, collections, datetime\n\
         print(math.sqrt(16), json.dumps({'a': [1, 2]}), re.findall(r'\\d+', 'a1b22'))\n\
         print(collections.Counter('aab').most_common(1), datetime.date(2024, 1, 2).isoformat())",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "success", "{v}");
    assert_eq!(
        v["stdout"],
        "4.0 {\"a\": [1, 2]} ['1', '22']\n[('a', 2)] 2024-01-02\n"
    );
    // Modules that import os or io internally work with their stand-ins.
    let v = run(
        &t,
        &tok,
        "python",
        "import random, dataclasses, statistics, io\n\
         @dataclasses.dataclass\nclass P:\n    x: int\n\
         s = io.StringIO()\nprint(P(3), file=s)\n\
         print(s.getvalue().strip(), random.randint(1, 6) in range(1, 7), statistics.mean([1, 2, 3]))",
        json!({}),
    )
    .await;
    assert_eq!(v["stdout"], "P(x=3) True 2\n", "{v}");
    // stderr and an uncaught exception with its traceback.
    let v = run(
        &t,
        &tok,
        "python",
        "import sys\nprint('before')\nprint('warn', file=sys.stderr)\ndef f():\n    raise ValueError('boom')\nf()",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["stdout"], "before\n");
    let err = v["stderr"].as_str().unwrap();
    assert!(err.starts_with("warn\n"), "{err}");
    assert!(
        err.contains("Traceback") && err.contains("ValueError: boom"),
        "{err}"
    );
    // Syntax error.
    let v = run(&t, &tok, "python", "def f(:\n  pass", json!({})).await;
    assert_eq!((status(&v), v["exit_code"].as_i64()), ("error", Some(1)));
    assert!(v["stderr"].as_str().unwrap().contains("SyntaxError"), "{v}");
    // sys.exit codes.
    let v = run(&t, &tok, "python", "import sys\nsys.exit(3)", json!({})).await;
    assert_eq!((status(&v), v["exit_code"].as_i64()), ("error", Some(3)));
    let v = run(
        &t,
        &tok,
        "python",
        "import sys\nprint(1)\nsys.exit(0)",
        json!({}),
    )
    .await;
    assert_eq!((status(&v), v["exit_code"].as_i64()), ("success", Some(0)));
    // Deep recursion is a RecursionError, not a crash.
    let v = run(
        &t,
        &tok,
        "python",
        "def f(n):\n    return f(n + 1)\nf(0)",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    let err = v["stderr"].as_str().unwrap();
    assert!(err.contains("RecursionError"), "{v}");
    assert!(err.contains("[Previous line repeated"), "{err}");
    assert!(err.lines().count() < 20, "{err}");
}

#[tokio::test]
async fn python_cannot_reach_files_network_processes_or_environment() {
    let t = server().await;
    let (_, tok) = t.user().await;
    for (code, expect) in [
        ("open('/etc/passwd').read()", "PermissionError"),
        ("import os", "ModuleNotFoundError"),
        ("import socket", "ModuleNotFoundError"),
        ("__import__('subprocess')", "Error"),
        ("import io\nio.open('/etc/passwd')", "UnsupportedOperation"),
        ("import io\nio.FileIO('/etc/passwd')", "PermissionError"),
        ("import random\nrandom._os.listdir('/')", "PermissionError"),
        (
            "import importlib\nimportlib.import_module('os')",
            "ModuleNotFoundError",
        ),
        ("import os.path", "ModuleNotFoundError"),
        ("import posix", "ModuleNotFoundError"),
        ("import ctypes", "Error"),
        ("import _io\n_io.FileIO('/etc/passwd')", "Error"),
    ] {
        let v = run(&t, &tok, "python", code, json!({})).await;
        assert_eq!(status(&v), "error", "{code}: {v}");
        let err = v["stderr"].as_str().unwrap();
        assert!(err.contains(expect), "{code}: {err}");
        assert!(
            !v["stdout"].as_str().unwrap().contains("root:"),
            "{code}: {v}"
        );
    }
    // Nothing of the server's environment is visible, and there is no module path.
    let v = run(
        &t,
        &tok,
        "python",
        "import sys\nprint(sys.path, sys.modules['os'].environ, sys.modules['os'].getenv('HOME'), \
         [m for m in ('socket', '_socket', 'subprocess', '_posixsubprocess') if m in sys.modules])",
        json!({}),
    )
    .await;
    // (`os` in sys.modules is the capability-free stand-in the standard library sees.)
    assert_eq!(v["stdout"], "[] {} None []\n", "{v}");
}

/// What a program reaches from every callable the sandbox set up: their `__globals__`,
/// closures, code, `__self__`, `__func__`, `__wrapped__` and `__builtins__`, recursively.
const WALK_CALLABLES: &str = r#"
import sys, builtins, random
real = builtins.__import__
roots = [v for v in vars(builtins).values() if callable(v)]
roots += [sys.stdout.write, sys.stderr.write, sys.stdin.readline, sys.stdin.read, input, open]
roots += [v for v in vars(random._os).values() if callable(v)]
seen, todo, found = set(), list(roots), []
while todo:
    o = todo.pop()
    if id(o) in seen or isinstance(o, type(sys)):
        continue
    seen.add(id(o))
    if isinstance(o, dict):
        found += [k for k in o if k in ('_real_import', '_BLOCKED')]
        found += ['%s=%r' % (k, v) for k, v in o.items()
                  if callable(v) and getattr(v, '__name__', '') == '__import__' and v is not real]
        todo += [v for v in o.values() if callable(v) or isinstance(v, dict)]
        continue
    for a in ('__globals__', '__closure__', '__code__', '__self__', '__func__', '__wrapped__',
              '__builtins__'):
        try:
            v = getattr(o, a)
        except Exception:
            continue
        if a == '__closure__' and v:
            todo += [c.cell_contents for c in v]
        elif v is not None:
            todo.append(v)
print('reached', len(seen) > 50, 'importers', found)
print([a for a in ('__globals__', '__closure__', '__code__', '__wrapped__', '__func__')
       if hasattr(real, a)], real.__self__ in (None, builtins))
"#;

#[tokio::test]
async fn python_import_guard_has_no_way_around() {
    let t = server().await;
    let (_, tok) = t.user().await;
    // The guard is native: no globals, closure or code leading to the real importer, from it
    // or from any other callable the sandbox set up.
    let v = run(&t, &tok, "python", WALK_CALLABLES, json!({})).await;
    assert_eq!(status(&v), "success", "{v}");
    assert_eq!(v["stdout"], "reached True importers []\n[] True\n", "{v}");
    // Who imports is the frame that runs the import, not what the caller claims.
    for code in [
        "__import__.__globals__['_real_import']('os')",
        "__import__('os', {'__name__': 'random'})",
        "__name__ = 'random'\nimport os",
        "exec('import os', {'__name__': 'random'})",
        "import random\nexec('import os', dict(vars(random)))",
        "__import__('threading')",
        "import importlib",
    ] {
        let v = run(&t, &tok, "python", code, json!({})).await;
        assert_eq!(status(&v), "error", "{code}: {v}");
        let err = v["stderr"].as_str().unwrap();
        assert!(
            err.contains("AttributeError") || err.contains("not available in the sandbox"),
            "{code}: {err}"
        );
    }
    // The standard library still imports what it needs.
    let v = run(
        &t,
        &tok,
        "python",
        "import random, dataclasses, functools, typing, inspect\nprint(random.choice([7]))",
        json!({}),
    )
    .await;
    assert_eq!(
        (status(&v), v["stdout"].as_str()),
        ("success", Some("7\n")),
        "{v}"
    );
}

#[tokio::test]
async fn python_internal_errors_end_the_run_as_python_errors() {
    let t = server().await;
    let (_, tok) = t.user().await;
    // Every class reachable from object.__subclasses__(), and their names.
    let walk = "seen = set()\n\
                def walk(c):\n\
                \x20   for s in type.__subclasses__(c):\n\
                \x20       if s not in seen:\n\
                \x20           seen.add(s)\n\
                \x20           walk(s)\n\
                walk(object)\n\
                names = [c.__name__ for c in seen]\n\
                print(len(names) > 100, 'async_generator_wrapped_value' in names)";
    let v = run(&t, &tok, "python", walk, json!({})).await;
    assert_eq!(
        (status(&v), v["stdout"].as_str()),
        ("success", Some("True True\n")),
        "{v}"
    );
    // A call that makes RustPython fail internally: a Python-like error, not a crash.
    let v = run(
        &t,
        &tok,
        "python",
        "import types\nprint('before')\ntypes.SimpleNamespace.__reduce__(None)",
        json!({}),
    )
    .await;
    assert_eq!(
        (status(&v), v["exit_code"].as_i64()),
        ("error", Some(1)),
        "{v}"
    );
    assert_eq!(v["stdout"], "before\n");
    let err = v["stderr"].as_str().unwrap();
    assert!(err.starts_with("SystemError: "), "{err}");
    assert!(!err.contains("crashed") && !err.contains(".rs:"), "{err}");
}

#[tokio::test]
async fn python_bounds_end_the_run_not_the_server() {
    let t = server().await;
    let (_, tok) = t.user().await;
    // An endless loop: timeout within the bound, with what was printed before.
    let start = Instant::now();
    let v = run(
        &t,
        &tok,
        "python",
        "print('started', flush=True)\nwhile True:\n    pass",
        json!({"timeout_ms": 1000}),
    )
    .await;
    let took = start.elapsed();
    assert_eq!(status(&v), "timeout", "{v}");
    assert_eq!(v["exit_code"], 137);
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("timed out after 1000 ms"),
        "{v}"
    );
    assert_eq!(v["stdout"], "started\n");
    // (Generous: the machine running the tests may be busy.)
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(v["duration_ms"].as_u64().unwrap() >= 1000, "{v}");
    // A one-line loop that never reaches a line boundary.
    let v = run(
        &t,
        &tok,
        "python",
        "while True: pass",
        json!({"timeout_ms": 500}),
    )
    .await;
    assert_eq!(status(&v), "timeout", "{v}");
    // One long builtin call, which no interpreter hook could interrupt.
    let v = run(
        &t,
        &tok,
        "python",
        "x = 7 ** 7 ** 9",
        json!({"timeout_ms": 500}),
    )
    .await;
    assert_eq!(
        (status(&v), v["exit_code"].as_i64()),
        ("timeout", Some(137)),
        "{v}"
    );
    // Memory bombs: one huge allocation, and a slowly growing list.
    let v = run(
        &t,
        &tok,
        "python",
        "x = 'a' * (1 << 31)\nprint(len(x))",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    let err = v["stderr"].as_str().unwrap();
    assert!(err.contains("Memory") || err.contains("memory"), "{err}");
    let v = run(
        &t,
        &tok,
        "python",
        "l = []\nwhile True:\n    l.append(bytearray(16 << 20))",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    let err = v["stderr"].as_str().unwrap();
    assert!(err.contains("Memory") || err.contains("memory"), "{err}");
    // Huge output: cut at the bound, with a note.
    let v = run(
        &t,
        &tok,
        "python",
        "while True:\n    print('x' * 1000)",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    assert_eq!(v["exit_code"], 137);
    let out = v["stdout"].as_str().unwrap();
    assert!(
        out.len() <= 1024 * 1024 && out.len() > 1000 * 1000,
        "{}",
        out.len()
    );
    assert!(
        v["stderr"].as_str().unwrap().contains("Output truncated"),
        "{v}"
    );
    // The server is fine afterwards.
    let v = run(&t, &tok, "python", "print('still here')", json!({})).await;
    assert_eq!(v["stdout"], "still here\n");
}

#[tokio::test]
async fn javascript_and_typescript_run_in_quickjs() {
    let t = server().await;
    let (_, tok) = t.user().await;
    let v = run(
        &t,
        &tok,
        "javascript",
        "console.log('hi', 1 + 2, [1, 'a'], {a: 1});\nconsole.error('careful');\n\
         let line; const got = []; while ((line = readline()) !== null) got.push(line);\n\
         print(got.join('|'));\n\
         Promise.resolve(5).then((x) => console.log('later', x));\n\
         setTimeout(() => console.log('timer'), 10);",
        json!({"stdin": "a\nb"}),
    )
    .await;
    assert_eq!(status(&v), "success", "{v}");
    assert_eq!(
        v["stdout"],
        "hi 3 [ 1, 'a' ] { a: 1 }\na|b\nlater 5\ntimer\n"
    );
    assert_eq!(v["stderr"], "careful\n");
    // An uncaught exception.
    let v = run(
        &t,
        &tok,
        "javascript",
        "console.log('a');\nfunction f() { throw new TypeError('bad thing'); }\nf();",
        json!({}),
    )
    .await;
    assert_eq!((status(&v), v["exit_code"].as_i64()), ("error", Some(1)));
    assert_eq!(v["stdout"], "a\n");
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .starts_with("TypeError: bad thing"),
        "{v}"
    );
    let v = run(
        &t,
        &tok,
        "javascript",
        "Promise.reject(new Error('nope'))",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("nope"), "{v}");
    let v = run(&t, &tok, "javascript", "let = ;", json!({})).await;
    assert_eq!(status(&v), "error");
    assert!(v["stderr"].as_str().unwrap().contains("SyntaxError"), "{v}");
    // Lone surrogates cannot be UTF-8: printed as U+FFFD.
    let v = run(
        &t,
        &tok,
        "javascript",
        "console.log('a\\uD800b')",
        json!({}),
    )
    .await;
    assert_eq!(
        (status(&v), v["stdout"].as_str()),
        ("success", Some("a\u{FFFD}b\n"))
    );
    // No host access: no require, no std/os modules, no process.
    let v = run(
        &t,
        &tok,
        "javascript",
        "console.log(typeof require, typeof process, typeof std, typeof os, typeof Deno, typeof fetch)",
        json!({}),
    )
    .await;
    assert_eq!(
        v["stdout"],
        "undefined undefined undefined undefined undefined undefined\n"
    );
    let v = run(
        &t,
        &tok,
        "javascript",
        "import('os').then(() => console.log('imported'))",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    assert!(!v["stdout"].as_str().unwrap().contains("imported"));
    // Bounds: an endless loop, a memory bomb, deep recursion.
    let v = run(
        &t,
        &tok,
        "javascript",
        "for (;;) {}",
        json!({"timeout_ms": 500}),
    )
    .await;
    assert_eq!(
        (status(&v), v["exit_code"].as_i64()),
        ("timeout", Some(137))
    );
    let v = run(
        &t,
        &tok,
        "javascript",
        "const a = []; for (;;) a.push(new Array(100000).fill(1));",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    assert!(
        v["stderr"].as_str().unwrap().contains("out of memory"),
        "{v}"
    );
    let v = run(
        &t,
        &tok,
        "javascript",
        "function f() { return f() + 1; } f();",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "error", "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("RangeError"), "{v}");
    // TypeScript: interfaces, generics, annotations, enums.
    let v = run(
        &t,
        &tok,
        "typescript",
        "interface User { name: string; age?: number }\n\
         function first<T>(xs: T[]): T | undefined { return xs[0]; }\n\
         enum Level { Low = 1, High = 3 }\n\
         type Pair<A, B> = [A, B];\n\
         const u: User = { name: 'Ada' };\n\
         const p: Pair<string, number> = [u.name, Level.High];\n\
         console.log(first<number>([7, 8]), p, (u.age ?? 0) as number);",
        json!({}),
    )
    .await;
    assert_eq!(status(&v), "success", "{v}");
    assert_eq!(v["stdout"], "7 [ 'Ada', 3 ] 0\n");
    let v = run(&t, &tok, "typescript", "let x: = 1;", json!({})).await;
    assert_eq!((status(&v), v["exit_code"].as_i64()), ("error", Some(1)));
    assert!(!v["stderr"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn runs_are_stored_as_the_caller() {
    let t = server().await;
    let (uid, tok) = t.user().await;
    let (_, other) = t.user().await;
    let conv = uuid::Uuid::new_v4();
    t.batch(&format!(
        "insert into public.conversations (id, user_id, title) values ('{conv}', '{uid}', 't')"
    ))
    .await;
    let v = run(
        &t,
        &tok,
        "python",
        "print('stored')",
        json!({"conversation_id": conv.to_string()}),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    let rows = t
        .sql(&format!(
            "select user_id::text, conversation_id::text, language, code, stdout, stderr, status, \
               exit_code, duration_ms from public.code_executions where id = '{id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(0), uid);
    assert_eq!(r.get::<_, Option<String>>(1), Some(conv.to_string()));
    assert_eq!(r.get::<_, String>(2), "python");
    assert_eq!(r.get::<_, String>(3), "print('stored')");
    assert_eq!(r.get::<_, String>(4), "stored\n");
    assert_eq!(r.get::<_, String>(5), "");
    assert_eq!(r.get::<_, String>(6), "success");
    assert_eq!(r.get::<_, i32>(7), 0);
    assert_eq!(
        r.get::<_, i32>(8) as i64,
        v["duration_ms"].as_i64().unwrap()
    );
    // Through REST: the owner sees the row, another user does not.
    let list = |token: String| {
        let url = format!("{}/rest/v1/code_executions?select=id,status", t.url);
        let http = t.http.clone();
        async move {
            let r = http
                .get(
                    &url,
                    &[
                        ("apikey", ANON_KEY),
                        ("authorization", &format!("Bearer {token}")),
                    ],
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    assert_eq!(
        list(tok.clone()).await,
        json!([{"id": id, "status": "success"}])
    );
    assert_eq!(list(other.clone()).await, json!([]));
    // Another user's conversation is not found for them (and nothing is stored or run).
    let r = post(
        &t,
        &other,
        &json!({"language": "python", "code": "print(1)", "conversation_id": conv.to_string()}),
    )
    .await;
    assert_error(&r, 404, "conversation_not_found");
    // NUL in output is answered as is and stored readable.
    let v = run(
        &t,
        &tok,
        "javascript",
        "console.log('a\\u0000b')",
        json!({}),
    )
    .await;
    assert_eq!(v["stdout"], "a\u{0}b\n");
    let rows = t
        .sql(&format!(
            "select stdout from public.code_executions where id = '{}'",
            v["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rows[0].get::<_, String>(0), "a\u{FFFD}b\n");
    assert_eq!(
        t.sql("select count(*)::int from public.code_executions")
            .await[0]
            .get::<_, i32>(0),
        2
    );
    // Each call is recorded in api_usage.
    let n: i64 = t
        .sql("select count(*) from public.api_usage where endpoint = 'code-execution' and status_code = 200")
        .await[0]
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let t = server().await;
    let (_, tok) = t.user().await;
    // Anonymous: 401.
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/functions/v1/code-execution", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {ANON_KEY}")),
            ],
            json!({"language": "python", "code": "print(1)"}).to_string(),
        )
        .await;
    assert_error(&r, 401, "unauthorized");
    assert_error(
        &post_raw(&t, &tok, "{not json".into()).await,
        400,
        "invalid_request",
    );
    assert_error(
        &post(&t, &tok, &json!({"code": "1"})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &post(&t, &tok, &json!({"language": "python", "code": 5})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &post(&t, &tok, &json!({"language": "ruby", "code": "puts 1"})).await,
        400,
        "unsupported_language",
    );
    assert_error(
        &post(
            &t,
            &tok,
            &json!({"language": "python", "code": "1", "timeout_ms": 60000}),
        )
        .await,
        400,
        "invalid_timeout",
    );
    assert_error(
        &post(
            &t,
            &tok,
            &json!({"language": "python", "code": "1", "timeout_ms": -1}),
        )
        .await,
        400,
        "invalid_timeout",
    );
    assert_error(
        &post(
            &t,
            &tok,
            &json!({"language": "python", "code": "#".repeat(256 * 1024 + 1)}),
        )
        .await,
        400,
        "code_too_large",
    );
    assert_error(
        &post(
            &t,
            &tok,
            &json!({"language": "python", "code": "1", "message_id": uuid::Uuid::new_v4()}),
        )
        .await,
        404,
        "message_not_found",
    );
    let r = t
        .http
        .send(
            "GET",
            &format!("{}/functions/v1/code-execution", t.url),
            &[("authorization", &format!("Bearer {tok}"))],
            "",
        )
        .await;
    assert_error(&r, 405, "method_not_allowed");
    // Nothing ran, nothing stored.
    assert_eq!(
        t.sql("select count(*)::int from public.code_executions")
            .await[0]
            .get::<_, i32>(0),
        0
    );
}

#[tokio::test]
async fn concurrent_runs_do_not_interfere() {
    let t = server_with(|cfg| {
        cfg.functions.code_max_concurrent = 3;
        // One user here: give them all the runners.
        cfg.functions.code_max_concurrent_per_user = Some(3);
    })
    .await;
    let (_, tok) = t.user().await;
    let mut tasks = vec![];
    for i in 0..4 {
        let (lang, code) = match i % 2 {
            0 => (
                "python",
                format!("import sys\nprint(sys.stdin.read() * 2, {i})"),
            ),
            _ => (
                "javascript",
                format!("console.log(readAll().repeat(2), {i})"),
            ),
        };
        let body = json!({"language": lang, "code": code, "stdin": format!("in{i}")});
        let http = t.http.clone();
        let url = format!("{}/functions/v1/code-execution", t.url);
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .send(
                    "POST",
                    &url,
                    &[("authorization", &format!("Bearer {tok}"))],
                    body.to_string(),
                )
                .await;
            (i, r.status, r.json())
        }));
    }
    // A runaway run at the same time.
    let spin = run(
        &t,
        &tok,
        "python",
        "while True: pass",
        json!({"timeout_ms": 1500}),
    );
    let (spin, results) = tokio::join!(spin, futures::future::join_all(tasks));
    assert_eq!(status(&spin), "timeout");
    for r in results {
        let (i, code, v) = r.unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(status(&v), "success", "{v}");
        assert_eq!(v["stdout"], format!("in{i}in{i} {i}\n"), "{v}");
    }
}

#[tokio::test]
async fn excess_runs_wait_then_get_503() {
    let t = server_with(|cfg| {
        cfg.functions.code_max_concurrent = 1;
        cfg.functions.code_queue_timeout_ms = 200;
    })
    .await;
    let (_, tok) = t.user().await;
    let slow = run(
        &t,
        &tok,
        "javascript",
        "for (;;) {}",
        json!({"timeout_ms": 3000}),
    );
    let late = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        post(&t, &tok, &json!({"language": "python", "code": "print(1)"})).await
    };
    let (slow, late) = tokio::join!(slow, late);
    assert_eq!(status(&slow), "timeout");
    assert_error(&late, 503, "too_many_runs");
    // Once the slot is free, runs go through again.
    let v = run(&t, &tok, "python", "print(2)", json!({})).await;
    assert_eq!(v["stdout"], "2\n");
}

#[tokio::test]
async fn one_user_cannot_starve_another() {
    let t = server_with(|cfg| {
        // One runner each for two users; one more request of a user may wait.
        cfg.functions.code_max_concurrent = 2;
        cfg.functions.code_max_queued_per_user = 1;
        cfg.functions.code_timeout_ms = 20_000;
        cfg.functions.code_queue_timeout_ms = 20_000;
    })
    .await;
    let (_, a) = t.user().await;
    let (_, b) = t.user().await;
    // User A: four runs looping until their time limit, all at once.
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut a_runs = vec![];
    for _ in 0..4 {
        let (http, tx, a) = (t.http.clone(), tx.clone(), a.clone());
        let url = format!("{}/functions/v1/code-execution", t.url);
        let body = json!({"language": "javascript", "code": "for (;;) {}", "timeout_ms": 20_000});
        a_runs.push(tokio::spawn(async move {
            let r = http
                .send(
                    "POST",
                    &url,
                    &[("authorization", &format!("Bearer {a}"))],
                    body.to_string(),
                )
                .await;
            let _ = tx.send((r.status, r.json()));
        }));
    }
    // Two of them are refused at once (A holds one runner and has one request waiting):
    // once both refusals are in, the other two are running or waiting.
    for _ in 0..2 {
        let (status, v) = answers.recv().await.unwrap();
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["code"], "user_run_limit", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // User B's run goes through while A's are still going.
    let v = run(&t, &b, "python", "print(1)", json!({})).await;
    assert_eq!(
        (status(&v), v["stdout"].as_str()),
        ("success", Some("1\n")),
        "{v}"
    );
    assert!(
        answers.try_recv().is_err(),
        "an accepted run of A answered before B's"
    );
    // Dropping A's requests kills their children.
    for h in a_runs {
        h.abort();
    }
}

/// The sandbox children of this process (the test server runs in it).
fn sandbox_children() -> Vec<u32> {
    let mut pids = vec![];
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|a| a == b"__sandbox") {
                pids.push(pid);
            }
        }
    }
    pids
}

#[tokio::test]
async fn the_child_process_is_locked_down() {
    let t = server().await;
    let (_, tok) = t.user().await;
    let spin = run(
        &t,
        &tok,
        "javascript",
        "for (;;) {}",
        json!({"timeout_ms": 3000}),
    );
    let inspect = async {
        // Wait for the child to be running user code.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut seen = vec![];
            for pid in sandbox_children() {
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                    continue;
                };
                for task in tasks.flatten() {
                    let status =
                        std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                    if status.lines().next() == Some("Name:\trunner")
                        && status.contains("Seccomp:\t2")
                    {
                        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
                            .unwrap_or_default();
                        let environ =
                            std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
                        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                            .map(|d| d.count())
                            .unwrap_or(0);
                        seen.push((status, limits, environ, cwd, fds));
                    }
                }
            }
            let limit = |limits: &str, name: &str| {
                limits
                    .lines()
                    .find(|l| l.starts_with(name))
                    .map(|l| l.split_whitespace().rev().nth(2).unwrap_or("").to_string())
                    .unwrap_or_default()
            };
            // Tests run side by side in this process: ours is the child whose CPU limit is
            // this run's (3 s of wall time, so 4 s of CPU). Without that limit none is found.
            let ours = seen
                .into_iter()
                .find(|(_, limits, ..)| limit(limits, "Max cpu time") == "4");
            if let Some((status, limits, environ, cwd, fds)) = ours {
                assert!(status.contains("NoNewPrivs:\t1"), "{status}");
                let limit = |name: &str| limit(&limits, name);
                assert_eq!(limit("Max processes"), "0", "{limits}");
                assert_eq!(limit("Max file size"), "0", "{limits}");
                assert_eq!(limit("Max open files"), "8", "{limits}");
                assert_eq!(limit("Max core file size"), "0", "{limits}");
                assert_ne!(limit("Max data size"), "unlimited", "{limits}");
                assert!(environ.is_empty(), "the child has an environment");
                assert_eq!(cwd.as_deref(), Some(std::path::Path::new("/")));
                assert_eq!(fds, 3, "only stdin, stdout and stderr are open");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no locked-down sandbox child found"
            );
        }
    };
    let (v, ()) = tokio::join!(spin, inspect);
    assert_eq!(status(&v), "timeout");
}

/// The value of one line of /proc/<pid>/limits (its soft limit).
fn soft_limit(pid: u32, name: &str) -> Option<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .split_whitespace()
        .next()
        .map(str::to_string)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_dropped_request_kills_its_child() {
    let t = server_with(|cfg| cfg.functions.code_timeout_ms = 20_000).await;
    let (_, tok) = t.user().await;
    let http = t.http.clone();
    let url = format!("{}/functions/v1/code-execution", t.url);
    // A CPU bound of 10 s marks this test's child among the others.
    let body = json!({"language": "javascript", "code": "for (;;) {}", "timeout_ms": 9000});
    let req = tokio::spawn(async move {
        http.send(
            "POST",
            &url,
            &[("authorization", &format!("Bearer {tok}"))],
            body.to_string(),
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let found = sandbox_children()
            .into_iter()
            .find(|p| soft_limit(*p, "Max cpu time").as_deref() == Some("10"));
        if let Some(pid) = found {
            break pid;
        }
        assert!(Instant::now() < deadline, "the child did not start");
    };
    req.abort();
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the child outlived its request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
