use super::*;

fn call<'a>(provider: Provider, turns: &'a [Turn], stream: bool) -> Call<'a> {
    Call {
        provider,
        base_url: "http://x.test/v1/",
        key: "k",
        model: "m",
        system: Some("be brief"),
        turns,
        temperature: Some(0.5),
        max_tokens: None,
        default_max_tokens: 77,
        stream,
    }
}

fn turn(role: &str, content: &str) -> Turn {
    Turn {
        role: role.into(),
        content: content.into(),
    }
}

#[test]
fn openai_and_mistral_bodies() {
    let turns = [
        turn("user", "hi"),
        turn("assistant", "hello"),
        turn("user", "q"),
    ];
    let c = call(Provider::OpenAi, &turns, true);
    assert_eq!(c.url(), "http://x.test/v1/chat/completions");
    let b = c.body();
    assert_eq!(
        b["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(b["messages"].as_array().unwrap().len(), 4);
    assert_eq!(b["stream_options"]["include_usage"], true);
    assert_eq!(b["temperature"], 0.5);
    assert!(b.get("max_tokens").is_none());
    let mut c = call(Provider::OpenAi, &turns, false);
    c.max_tokens = Some(9);
    assert_eq!(c.body()["max_tokens"], 9, "an OpenAI-compatible server");
    c.base_url = "https://api.openai.com/v1";
    assert_eq!(c.body()["max_completion_tokens"], 9, "OpenAI itself");
    assert!(c.body().get("max_tokens").is_none());
    let mut c = call(Provider::Mistral, &turns, true);
    c.max_tokens = Some(5);
    let b = c.body();
    assert!(b.get("stream_options").is_none());
    assert_eq!(b["max_tokens"], 5);
    assert_eq!(c.headers()[0].1, "Bearer k");
}

#[test]
fn anthropic_body_moves_system_and_joins_turns() {
    let turns = [
        turn("assistant", "cut off"),
        turn("system", "extra"),
        turn("user", "a"),
        turn("user", "b"),
        turn("assistant", "c"),
    ];
    let c = call(Provider::Anthropic, &turns, false);
    assert_eq!(c.url(), "http://x.test/v1/v1/messages");
    let b = c.body();
    assert_eq!(b["system"], "be brief\n\nextra");
    assert_eq!(
        b["messages"],
        json!([{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}])
    );
    assert_eq!(b["max_tokens"], 77);
    assert!(b.get("stream").is_none());
    let h = c.headers();
    assert!(h.contains(&("x-api-key", "k".into())));
    assert!(h.contains(&("anthropic-version", ANTHROPIC_VERSION.into())));
}

#[test]
fn answers_are_read() {
    let a = parse_answer(
        Provider::OpenAi,
        br#"{"choices":[{"message":{"role":"assistant","content":"Hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
    )
    .unwrap();
    assert_eq!(a.content, "Hi");
    assert_eq!(a.usage.total(), Some(4));
    let a = parse_answer(
        Provider::Anthropic,
        br#"{"content":[{"type":"text","text":"A"},{"type":"text","text":"B"}],"usage":{"input_tokens":5,"output_tokens":2}}"#,
    )
    .unwrap();
    assert_eq!(a.content, "AB");
    assert_eq!(
        a.usage.json(),
        json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    );
    assert!(parse_answer(Provider::Mistral, b"{}").is_err());
}

fn ev(event: &str, data: &str) -> Event {
    Event {
        event: event.into(),
        data: data.into(),
    }
}

#[test]
fn openai_stream_steps() {
    let mut r = StreamReader::new(Provider::OpenAi);
    assert_eq!(
        r.step(
            &ev("", r#"{"choices":[{"delta":{"role":"assistant"}}]}"#),
            "k"
        )
        .unwrap(),
        Step::Nothing
    );
    assert_eq!(
        r.step(
            &ev(
                "",
                r#"{"choices":[{"delta":{"content":"He"},"finish_reason":null}]}"#
            ),
            "k"
        )
        .unwrap(),
        Step::Delta("He".into())
    );
    assert!(!r.complete());
    r.step(
        &ev("", r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
        "k",
    )
    .unwrap();
    assert!(r.complete());
    r.step(
        &ev(
            "",
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        ),
        "k",
    )
    .unwrap();
    assert_eq!(r.usage.total(), Some(3));
    assert_eq!(r.step(&ev("", "[DONE]"), "k").unwrap(), Step::Done);
    let e = StreamReader::new(Provider::OpenAi)
        .step(&ev("", r#"{"error":{"message":"boom"}}"#), "k")
        .unwrap_err();
    assert_eq!(e.status, 502);
    assert!(e.message.contains("boom"));
}

#[test]
fn anthropic_stream_steps() {
    let mut r = StreamReader::new(Provider::Anthropic);
    r.step(
        &ev(
            "message_start",
            r#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#,
        ),
        "k",
    )
    .unwrap();
    assert_eq!(
        r.step(&ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Yo"}}"#), "k").unwrap(),
        Step::Delta("Yo".into())
    );
    r.step(&ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#), "k").unwrap();
    assert_eq!(r.usage.json()["total_tokens"], 13);
    assert_eq!(
        r.step(&ev("message_stop", r#"{"type":"message_stop"}"#), "k")
            .unwrap(),
        Step::Done
    );
    let e = StreamReader::new(Provider::Anthropic)
        .step(
            &ev(
                "error",
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
            ),
            "k",
        )
        .unwrap_err();
    assert_eq!((e.status.as_u16(), e.code), (429, "rate_limited"));
}

#[test]
fn errors_keep_their_class_and_never_the_key() {
    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {key}. Also sk-pro*********6789 here.","type":"invalid_request_error"}}}}"#
    );
    let e = http_error(Provider::OpenAi, 401, body.as_bytes(), key);
    assert_eq!((e.status.as_u16(), e.code), (401, "provider_auth_error"));
    assert!(!e.message.contains("abcdefghij"), "{}", e.message);
    assert!(!e.message.contains("6789"), "{}", e.message);
    assert!(e
        .message
        .starts_with("OpenAI answered 401: Incorrect API key provided"));
    let e = http_error(
        Provider::Mistral,
        429,
        br#"{"message":"Requests rate limit exceeded"}"#,
        "x",
    );
    assert_eq!((e.status.as_u16(), e.code), (429, "rate_limited"));
    assert!(e.message.contains("rate limit exceeded"));
    let e = http_error(
        Provider::Anthropic,
        529,
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        "x",
    );
    assert_eq!((e.status.as_u16(), e.code), (502, "provider_error"));
    let e = http_error(Provider::OpenAi, 500, b"<html>oops</html>", "x");
    assert_eq!(e.message, "OpenAI answered 500: Internal Server Error");
    assert!(scrub(&"x".repeat(2000), "k").chars().count() <= MAX_MESSAGE_CHARS + 1);
    let m = scrub(
        "model claude-3-5-haiku-20241022 with key aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF1",
        "other",
    );
    assert_eq!(m, "model claude-3-5-haiku-20241022 with key [redacted]");
}
