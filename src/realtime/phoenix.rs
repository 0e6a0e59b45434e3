//! Phoenix channel frames as supabase-js speaks them: vsn 1.0.0 JSON objects, vsn 2.0.0 JSON
//! arrays, and the 2.0.0 binary user-broadcast frames (kind 3 client->server, kind 4
//! server->client). Pure: no I/O, so every layout is unit-tested here.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    pub fn parse(s: Option<&str>) -> Option<Vsn> {
        match s {
            None | Some("1.0.0") => Some(Vsn::V1),
            Some("2.0.0") => Some(Vsn::V2),
            Some(_) => None,
        }
    }
}

/// One decoded client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// A message payload: JSON, or a binary user broadcast (kind 3).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    UserBroadcast(UserBroadcast),
}

/// A user broadcast whose payload travels as bytes: JSON text (encoding 1) or raw (0).
#[derive(Debug, Clone, PartialEq)]
pub struct UserBroadcast {
    pub event: String,
    pub json: bool,
    pub data: Bytes,
    /// Metadata JSON text (e.g. `{"persist":true}`), if any.
    pub meta: Option<String>,
}

#[derive(Debug, PartialEq)]
pub struct DecodeError(pub String);

fn opt_string(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Decode a text frame in the socket's protocol version.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Msg, DecodeError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| DecodeError(format!("invalid JSON: {e}")))?;
    match vsn {
        Vsn::V2 => {
            let arr = v
                .as_array()
                .filter(|a| a.len() >= 5)
                .ok_or_else(|| DecodeError("expected V2 array".into()))?;
            Ok(Msg {
                join_ref: opt_string(&arr[0]),
                reference: opt_string(&arr[1]),
                topic: arr[2]
                    .as_str()
                    .ok_or_else(|| DecodeError("topic must be a string".into()))?
                    .to_string(),
                event: arr[3]
                    .as_str()
                    .ok_or_else(|| DecodeError("event must be a string".into()))?
                    .to_string(),
                payload: Payload::Json(arr[4].clone()),
            })
        }
        Vsn::V1 => {
            let o = v
                .as_object()
                .ok_or_else(|| DecodeError("expected a message object".into()))?;
            let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            Ok(Msg {
                join_ref: o.get("join_ref").and_then(opt_string),
                reference: o.get("ref").and_then(opt_string),
                topic: s("topic").ok_or_else(|| DecodeError("missing topic".into()))?,
                event: s("event").ok_or_else(|| DecodeError("missing event".into()))?,
                payload: Payload::Json(o.get("payload").cloned().unwrap_or(json!({}))),
            })
        }
    }
}

/// Decode a binary frame (vsn 2.0.0): only kind 3, the user broadcast push.
pub fn decode_binary(b: &[u8]) -> Result<Msg, DecodeError> {
    let bad = || DecodeError("malformed binary frame".into());
    if b.len() < 7 {
        return Err(bad());
    }
    if b[0] != 3 {
        return Err(DecodeError(format!(
            "unsupported binary frame kind {}",
            b[0]
        )));
    }
    let lens = [
        b[1] as usize,
        b[2] as usize,
        b[3] as usize,
        b[4] as usize,
        b[5] as usize,
    ];
    let encoding = b[6];
    let mut off = 7;
    let mut parts = Vec::with_capacity(5);
    for l in lens {
        let end = off + l;
        let s = b.get(off..end).ok_or_else(bad)?;
        parts.push(std::str::from_utf8(s).map_err(|_| bad())?.to_string());
        off = end;
    }
    let data = Bytes::copy_from_slice(&b[off..]);
    let json = encoding == 1;
    if json && serde_json::from_slice::<Value>(&data).is_err() {
        return Err(DecodeError("broadcast payload is not valid JSON".into()));
    }
    let meta = parts.pop().filter(|m| !m.is_empty());
    let event = parts.pop().unwrap_or_default();
    let topic = parts.pop().unwrap_or_default();
    let reference = parts.pop().filter(|s| !s.is_empty());
    let join_ref = parts.pop().filter(|s| !s.is_empty());
    Ok(Msg {
        join_ref,
        reference,
        topic,
        event: "broadcast".into(),
        payload: Payload::UserBroadcast(UserBroadcast {
            event,
            json,
            data,
            meta,
        }),
    })
}

/// Encode a server->client JSON message in the socket's version.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> String {
    match vsn {
        Vsn::V2 => json!([join_ref, reference, topic, event, payload]).to_string(),
        Vsn::V1 => json!({
            "topic": topic,
            "event": event,
            "payload": payload,
            "ref": reference,
            "join_ref": join_ref,
        })
        .to_string(),
    }
}

/// A `phx_reply`.
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    ok: bool,
    response: Value,
) -> String {
    encode(
        vsn,
        join_ref,
        reference,
        topic,
        "phx_reply",
        &json!({"status": if ok { "ok" } else { "error" }, "response": response}),
    )
}

/// Kind-4 frame: a user broadcast delivered to a vsn 2.0.0 client.
pub fn encode_user_broadcast(topic: &str, ub: &UserBroadcast) -> Option<Bytes> {
    let meta = ub.meta.as_deref().unwrap_or("");
    if topic.len() > 255 || ub.event.len() > 255 || meta.len() > 255 {
        return None;
    }
    let mut b =
        BytesMut::with_capacity(5 + topic.len() + ub.event.len() + meta.len() + ub.data.len());
    b.put_u8(4);
    b.put_u8(topic.len() as u8);
    b.put_u8(ub.event.len() as u8);
    b.put_u8(meta.len() as u8);
    b.put_u8(u8::from(ub.json));
    b.put_slice(topic.as_bytes());
    b.put_slice(ub.event.as_bytes());
    b.put_slice(meta.as_bytes());
    b.put_slice(&ub.data);
    Some(b.freeze())
}

/// The JSON form `{type:"broadcast",event,payload,meta?}` of a user broadcast (for vsn 1.0.0
/// clients); None for a raw binary payload, which 1.0.0 cannot represent.
pub fn user_broadcast_as_json(ub: &UserBroadcast) -> Option<Value> {
    if !ub.json {
        return None;
    }
    let payload: Value = serde_json::from_slice(&ub.data).ok()?;
    let mut v = json!({"type": "broadcast", "event": ub.event, "payload": payload});
    if let Some(m) = ub
        .meta
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
    {
        v["meta"] = m;
    }
    Some(v)
}

/// The fuzz target for the frame decoders: `data` as a binary frame, and (lossily) as a
/// vsn 1.0.0 and a vsn 2.0.0 text frame. Never panics; panics (a finding) when a decoded
/// message does not survive being encoded and decoded again.
pub fn fuzz_frame(data: &[u8]) {
    if let Ok(m) = decode_binary(data) {
        if let Payload::UserBroadcast(ub) = &m.payload {
            let _ = encode_user_broadcast(&m.topic, ub);
            let _ = user_broadcast_as_json(ub);
            // A kind-3 frame rebuilt from what was decoded decodes to the same message.
            let parts = [
                m.join_ref.as_deref().unwrap_or(""),
                m.reference.as_deref().unwrap_or(""),
                &m.topic,
                &ub.event,
                ub.meta.as_deref().unwrap_or(""),
            ];
            let mut f = vec![3];
            f.extend(parts.iter().map(|p| p.len() as u8));
            f.push(data[6]);
            for p in parts {
                f.extend_from_slice(p.as_bytes());
            }
            f.extend_from_slice(&ub.data);
            assert_eq!(decode_binary(&f).as_ref(), Ok(&m), "kind 3 round trip");
        }
    }
    let text = String::from_utf8_lossy(data);
    for vsn in [Vsn::V1, Vsn::V2] {
        if let Ok(m) = decode_text(vsn, &text) {
            let Payload::Json(payload) = &m.payload else {
                panic!("a text frame decoded to a binary payload");
            };
            let again = encode(
                vsn,
                m.join_ref.as_deref(),
                m.reference.as_deref(),
                &m.topic,
                &m.event,
                payload,
            );
            let back = decode_text(vsn, &again).expect("an encoded frame decodes");
            assert_eq!((&back.topic, &back.event), (&m.topic, &m.event));
            let _ = reply(
                vsn,
                None,
                m.reference.as_deref(),
                &m.topic,
                false,
                payload.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_text_roundtrip() {
        let m = decode_text(Vsn::V2, r#"[null,"9","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(m.reference.as_deref(), Some("9"));
        assert_eq!(m.join_ref, None);
        assert_eq!(m.topic, "phoenix");
        assert_eq!(m.event, "heartbeat");
        let m = decode_text(
            Vsn::V1,
            r#"{"topic":"realtime:a","event":"phx_join","payload":{"x":1},"ref":"1","join_ref":"1"}"#,
        )
        .unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.payload, Payload::Json(json!({"x":1})));
        assert!(decode_text(Vsn::V2, r#"{"topic":"x"}"#).is_err());
        assert!(decode_text(Vsn::V1, r#"[1,2,3,4,5]"#).is_err());
        assert!(decode_text(Vsn::V1, "nope").is_err());
        let out = reply(Vsn::V2, Some("1"), Some("2"), "realtime:a", true, json!({}));
        assert_eq!(
            out,
            r#"["1","2","realtime:a","phx_reply",{"status":"ok","response":{}}]"#
        );
        let out: Value = serde_json::from_str(&reply(
            Vsn::V1,
            None,
            Some("3"),
            "phoenix",
            false,
            json!({"reason":"x"}),
        ))
        .unwrap();
        assert_eq!(out["event"], "phx_reply");
        assert_eq!(out["payload"]["status"], "error");
        assert_eq!(out["ref"], "3");
    }

    fn kind3(
        join_ref: &str,
        r: &str,
        topic: &str,
        event: &str,
        meta: &str,
        enc: u8,
        data: &[u8],
    ) -> Vec<u8> {
        let mut v = vec![
            3,
            join_ref.len() as u8,
            r.len() as u8,
            topic.len() as u8,
            event.len() as u8,
            meta.len() as u8,
            enc,
        ];
        for s in [join_ref, r, topic, event, meta] {
            v.extend_from_slice(s.as_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn kind3_decodes() {
        let f = kind3(
            "1",
            "5",
            "realtime:room",
            "ev",
            r#"{"persist":true}"#,
            1,
            br#"{"a":1}"#,
        );
        let m = decode_binary(&f).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.reference.as_deref(), Some("5"));
        assert_eq!(m.topic, "realtime:room");
        assert_eq!(m.event, "broadcast");
        let Payload::UserBroadcast(ub) = m.payload else {
            panic!()
        };
        assert_eq!(ub.event, "ev");
        assert!(ub.json);
        assert_eq!(&ub.data[..], br#"{"a":1}"#);
        assert_eq!(ub.meta.as_deref(), Some(r#"{"persist":true}"#));
        let raw = kind3("", "", "realtime:r", "bin", "", 0, &[1, 2, 3]);
        let m = decode_binary(&raw).unwrap();
        assert_eq!(m.join_ref, None);
        let Payload::UserBroadcast(ub) = m.payload else {
            panic!()
        };
        assert!(!ub.json);
        assert_eq!(&ub.data[..], &[1, 2, 3]);
        // Truncated, wrong kind, invalid JSON payload.
        assert!(decode_binary(&raw[..8]).is_err());
        assert!(decode_binary(&[4, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_binary(&kind3("", "", "t", "e", "", 1, b"{nope")).is_err());
    }

    #[test]
    fn kind4_layout() {
        let ub = UserBroadcast {
            event: "ev".into(),
            json: false,
            data: Bytes::from_static(&[9, 8]),
            meta: None,
        };
        let b = encode_user_broadcast("realtime:x", &ub).unwrap();
        assert_eq!(&b[..5], &[4, 10, 2, 0, 0]);
        assert_eq!(&b[5..15], b"realtime:x");
        assert_eq!(&b[15..17], b"ev");
        assert_eq!(&b[17..], &[9, 8]);
        assert!(user_broadcast_as_json(&ub).is_none());
        let ub = UserBroadcast {
            event: "ev".into(),
            json: true,
            data: Bytes::from_static(br#"{"k":"v"}"#),
            meta: None,
        };
        assert_eq!(
            user_broadcast_as_json(&ub).unwrap(),
            json!({"type":"broadcast","event":"ev","payload":{"k":"v"}})
        );
        assert_eq!(encode_user_broadcast("realtime:x", &ub).unwrap()[4], 1);
    }
}
