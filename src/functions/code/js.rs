//! JavaScript on QuickJS (rquickjs), in the sandbox child. The context has the language's
//! built-ins only: QuickJS's `std` and `os` modules (files, processes, sockets) are not part
//! of rquickjs, and no module loader is installed.
//!
//! Globals added for programs:
//! - `console.log/info/debug` → stdout, `console.error/warn` → stderr (values formatted
//!   roughly as Node does), and `print(...)` as `console.log`.
//! - `readline()`: the next line of the request's `stdin` (without its newline), `null` at
//!   the end; `readAll()`: the rest of `stdin` as one string.
//! - `setTimeout`/`clearTimeout`/`queueMicrotask`: timers run after the script in order of
//!   their delay, without actually waiting.
//!
//! An uncaught exception (or promise rejection nobody handles) prints `Name: message` and the
//! stack on stderr and ends the run with exit code 1. The QuickJS heap is bounded by the
//! memory limit (an `InternalError: out of memory` past it).

use std::cell::RefCell;
use std::rc::Rc;

use rquickjs::context::EvalOptions;
use rquickjs::{Context, Ctx, Function, Object, Runtime, Value};

use super::sandbox::{sink, Status, Stream, EXIT_CRASHED, EXIT_KILLED};

const PRELUDE: &str = r#"
(function (emit, input) {
  'use strict';
  let pos = 0;
  const ident = /^[A-Za-z_$][\w$]*$/;
  function quote(s) {
    return "'" + s.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n') + "'";
  }
  function errorText(e) {
    const head = (e.name || 'Error') + ': ' + e.message;
    const stack = typeof e.stack === 'string' ? e.stack.replace(/\s+$/, '') : '';
    return stack ? head + '\n' + stack : head;
  }
  function inspect(v, depth, seen) {
    switch (typeof v) {
      case 'string': return depth === 0 ? v : quote(v);
      case 'number': return Object.is(v, -0) ? '-0' : String(v);
      case 'bigint': return v + 'n';
      case 'undefined': return 'undefined';
      case 'boolean': return String(v);
      case 'symbol': return v.toString();
      case 'function': return v.name ? '[Function: ' + v.name + ']' : '[Function (anonymous)]';
    }
    if (v === null) return 'null';
    if (v instanceof Error) return errorText(v);
    if (seen.indexOf(v) >= 0) return '[Circular]';
    if (v instanceof Date) return isNaN(v) ? 'Invalid Date' : v.toISOString();
    if (v instanceof RegExp) return String(v);
    if (depth > 2) return Array.isArray(v) ? '[Array]' : '[Object]';
    seen.push(v);
    let s;
    try {
      if (Array.isArray(v)) {
        const items = v.map((x) => inspect(x, depth + 1, seen));
        s = items.length ? '[ ' + items.join(', ') + ' ]' : '[]';
      } else if (v instanceof Map) {
        const items = [];
        v.forEach((val, key) => items.push(inspect(key, depth + 1, seen) + ' => ' + inspect(val, depth + 1, seen)));
        s = 'Map(' + v.size + ') {' + (items.length ? ' ' + items.join(', ') + ' ' : '') + '}';
      } else if (v instanceof Set) {
        const items = [];
        v.forEach((val) => items.push(inspect(val, depth + 1, seen)));
        s = 'Set(' + v.size + ') {' + (items.length ? ' ' + items.join(', ') + ' ' : '') + '}';
      } else if (v instanceof Promise) {
        s = 'Promise {}';
      } else {
        const items = Object.keys(v).map((k) => (ident.test(k) ? k : quote(k)) + ': ' + inspect(v[k], depth + 1, seen));
        const ctor = v.constructor && v.constructor !== Object && v.constructor.name;
        const body = items.length ? '{ ' + items.join(', ') + ' }' : '{}';
        s = ctor ? ctor + ' ' + body : body;
      }
    } finally {
      seen.pop();
    }
    return s;
  }
  const format = (args) => args.map((a) => inspect(a, 0, [])).join(' ');
  // Lone surrogates cannot be UTF-8: shown as U+FFFD.
  const lone = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
  const wellFormed = (s) => (typeof s.toWellFormed === 'function' ? s.toWellFormed() : s.replace(lone, '\uFFFD'));
  const out = (...a) => { emit(1, wellFormed(format(a) + '\n')); };
  const err = (...a) => { emit(2, wellFormed(format(a) + '\n')); };
  const define = (name, value) => Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  define('console', { log: out, info: out, debug: out, trace: out, dir: out, error: err, warn: err });
  define('print', out);
  define('readline', function readline() {
    if (pos >= input.length) return null;
    let end = input.indexOf('\n', pos);
    if (end < 0) end = input.length;
    let line = input.slice(pos, end);
    pos = end + 1;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    return line;
  });
  define('readAll', function readAll() {
    const rest = pos >= input.length ? '' : input.slice(pos);
    pos = input.length;
    return rest;
  });
  const timers = [];
  let seq = 0;
  define('setTimeout', function setTimeout(fn, ms, ...args) {
    const id = ++seq;
    timers.push({ id, at: Math.max(0, Number(ms) || 0), fn, args });
    return id;
  });
  define('clearTimeout', function clearTimeout(id) {
    const i = timers.findIndex((t) => t.id === id);
    if (i >= 0) timers.splice(i, 1);
  });
  define('queueMicrotask', function queueMicrotask(fn) { Promise.resolve().then(fn); });
  let now = 0;
  function nextTimer() {
    if (!timers.length) return false;
    let best = 0;
    for (let i = 1; i < timers.length; i++) {
      const t = timers[i], b = timers[best];
      if (t.at < b.at || (t.at === b.at && t.id < b.id)) best = i;
    }
    const t = timers.splice(best, 1)[0];
    now = Math.max(now, t.at);
    for (const other of timers) if (other.at < now) other.at = now;
    if (typeof t.fn === 'function') t.fn(...t.args);
    return true;
  }
  function uncaught(e) {
    return wellFormed(e instanceof Error ? errorText(e) : 'Uncaught ' + inspect(e, 1, []));
  }
  return { uncaught, nextTimer };
})
"#;

/// Run `code`; output goes to the sink. Returns the status and exit code.
pub fn run(code: &str, stdin: &str, memory_bytes: usize) -> (Status, i32) {
    let rt = match Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            sink().emit(
                Stream::Stderr,
                &format!("The JavaScript engine did not start: {e}\n"),
            );
            return (Status::Error, EXIT_CRASHED);
        }
    };
    rt.set_memory_limit(memory_bytes);
    // The runner thread has a 64 MB stack; QuickJS throws a RangeError well before it.
    rt.set_max_stack_size(16 * 1024 * 1024);
    let unhandled: Rc<RefCell<Vec<String>>> = Rc::default();
    let tracked = unhandled.clone();
    rt.set_host_promise_rejection_tracker(Some(Box::new(
        move |_ctx: Ctx<'_>, _promise: Value<'_>, reason: Value<'_>, handled: bool| {
            let mut list = tracked.borrow_mut();
            if handled {
                list.pop();
            } else {
                list.push(describe(&reason));
            }
        },
    )));
    let ctx = match Context::full(&rt) {
        Ok(c) => c,
        Err(e) => {
            sink().emit(
                Stream::Stderr,
                &format!("The JavaScript engine did not start: {e}\n"),
            );
            return (Status::Error, EXIT_CRASHED);
        }
    };
    let memory_mb = memory_bytes / (1024 * 1024);
    ctx.with(|ctx| {
        let helpers = match setup(&ctx, stdin) {
            Ok(h) => h,
            Err(e) => {
                let text = exception_text(&ctx, e, None);
                sink().emit(
                    Stream::Stderr,
                    &format!("The sandbox could not be set up: {text}\n"),
                );
                return (Status::Error, EXIT_CRASHED);
            }
        };
        let uncaught: Option<Function> = helpers.get("uncaught").ok();
        let next_timer: Option<Function> = helpers.get("nextTimer").ok();
        let mut opts = EvalOptions::default();
        opts.global = true;
        opts.strict = false;
        opts.filename = Some("main.js".into());
        let mut outcome = ctx.eval_with_options::<(), _>(code.as_bytes().to_vec(), opts);
        if outcome.is_ok() {
            outcome = loop {
                while ctx.execute_pending_job() {}
                let Some(next) = next_timer.as_ref() else {
                    break Ok(());
                };
                match next.call::<_, bool>(()) {
                    Ok(true) => continue,
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
        }
        match outcome {
            Ok(()) => {
                let pending = std::mem::take(&mut *unhandled.borrow_mut());
                if let Some(reason) = pending.first() {
                    sink().emit(Stream::Stderr, &format!("Uncaught (in promise) {reason}\n"));
                    return (Status::Error, 1);
                }
                (Status::Success, 0)
            }
            Err(e) => {
                let text = exception_text(&ctx, e, uncaught.as_ref());
                sink().emit(Stream::Stderr, &format!("{text}\n"));
                if text.contains("out of memory") {
                    sink().emit(
                        Stream::Stderr,
                        &format!("Memory limit exceeded: the run used more than {memory_mb} MB.\n"),
                    );
                    return (Status::Error, EXIT_KILLED);
                }
                (Status::Error, 1)
            }
        }
    })
}

fn setup<'js>(ctx: &Ctx<'js>, stdin: &str) -> rquickjs::Result<Object<'js>> {
    let emit = Function::new(ctx.clone(), |fd: i32, text: String| {
        let stream = if fd == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        sink().emit(stream, &text);
    })?;
    let mut opts = EvalOptions::default();
    opts.global = true;
    opts.strict = true;
    opts.filename = Some("<sandbox>".into());
    let make: Function = ctx.eval_with_options(PRELUDE.as_bytes().to_vec(), opts)?;
    make.call((emit, stdin.to_string()))
}

/// The text of the exception behind `e` (the pending exception when it is one).
fn exception_text<'js>(
    ctx: &Ctx<'js>,
    e: rquickjs::Error,
    uncaught: Option<&Function<'js>>,
) -> String {
    if !matches!(e, rquickjs::Error::Exception) {
        return e.to_string();
    }
    let value = ctx.catch();
    if let Some(f) = uncaught {
        if let Ok(text) = f.call::<_, String>((value.clone(),)) {
            return text;
        }
        // Formatting failed (out of memory, a throwing getter): fall back to a plain text.
        let _ = ctx.catch();
    }
    describe(&value)
}

/// A plain description of a thrown value, without calling into user code.
fn describe(v: &Value<'_>) -> String {
    if let Some(o) = v.as_object() {
        let name: Option<String> = o.get("name").ok();
        let message: Option<String> = o.get("message").ok();
        if let Some(message) = message {
            return format!("{}: {message}", name.unwrap_or_else(|| "Error".into()));
        }
    }
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return s;
    }
    format!("{v:?}")
}
