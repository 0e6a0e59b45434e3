//! Decoding of pgoutput (protocol version 1) messages into row changes.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub(super) struct Column {
    pub(super) key: bool,
    pub(super) name: String,
    pub(super) type_name: String,
    /// `format_type` text, for casting key values back in the RLS check.
    pub(super) type_sql: String,
}

#[derive(Debug, Clone)]
pub(super) struct Relation {
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) columns: Vec<Column>,
    pub(super) rls: bool,
    pub(super) pk: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Unchanged,
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Insert,
    Update,
    Delete,
}

#[derive(Debug)]
pub(super) struct Change {
    pub(super) rel: u32,
    pub(super) kind: Kind,
    pub(super) new: Option<Vec<Cell>>,
    pub(super) old: Option<Vec<Cell>>,
    /// The old tuple holds only the replica identity key ('K').
    pub(super) old_is_key: bool,
    pub(super) commit_ts: i64,
    /// The transaction (32-bit id, as pgoutput sends it).
    pub(super) xid: u32,
}

#[derive(Default)]
pub(super) struct Decoder {
    pub(super) relations: HashMap<u32, Relation>,
    pub(super) fresh: Vec<u32>,
    pub(super) commit_ts: i64,
    pub(super) xid: u32,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("truncated message")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let rest = &self.b[self.at..];
        let end = rest
            .iter()
            .position(|c| *c == 0)
            .ok_or("unterminated string")?;
        let s = String::from_utf8_lossy(&rest[..end]).to_string();
        self.at += end + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>, String> {
        let n = self.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?.max(0) as usize;
                    Cell::Text(String::from_utf8_lossy(self.take(len)?).to_string())
                }
                other => return Err(format!("unknown tuple cell kind {other}")),
            });
        }
        Ok(out)
    }
}

impl Decoder {
    pub(super) fn message(&mut self, data: &[u8]) -> Result<Option<Change>, String> {
        let mut r = Reader { b: data, at: 1 };
        match data.first() {
            Some(b'B') => {
                let _lsn = r.i64()?;
                self.commit_ts = r.i64()?;
                self.xid = r.i32()? as u32;
                Ok(None)
            }
            Some(b'R') => {
                let oid = r.i32()? as u32;
                let schema = r.cstr()?;
                let table = r.cstr()?;
                let _ident = r.u8()?;
                let n = r.i16()?;
                let mut columns = vec![];
                for _ in 0..n {
                    let flags = r.u8()?;
                    let name = r.cstr()?;
                    let _type_oid = r.i32()?;
                    let _typmod = r.i32()?;
                    columns.push(Column {
                        key: flags & 1 == 1,
                        name,
                        type_name: String::new(),
                        type_sql: String::new(),
                    });
                }
                let old = self.relations.get(&oid);
                let rel = Relation {
                    schema,
                    table,
                    columns,
                    // Until the catalog says otherwise, assume RLS: fail closed.
                    rls: old.map(|o| o.rls).unwrap_or(true),
                    pk: old.map(|o| o.pk.clone()).unwrap_or_default(),
                };
                self.relations.insert(oid, rel);
                self.fresh.push(oid);
                Ok(None)
            }
            Some(b'I') => {
                let rel = r.i32()? as u32;
                if r.u8()? != b'N' {
                    return Err("insert without a new tuple".into());
                }
                let new = r.tuple()?;
                Ok(Some(Change {
                    rel,
                    kind: Kind::Insert,
                    new: Some(new),
                    old: None,
                    old_is_key: false,
                    commit_ts: self.commit_ts,
                    xid: self.xid,
                }))
            }
            Some(b'U') => {
                let rel = r.i32()? as u32;
                let mut tag = r.u8()?;
                let (mut old, mut old_is_key) = (None, false);
                if tag == b'K' || tag == b'O' {
                    old_is_key = tag == b'K';
                    old = Some(r.tuple()?);
                    tag = r.u8()?;
                }
                if tag != b'N' {
                    return Err("update without a new tuple".into());
                }
                let new = r.tuple()?;
                Ok(Some(Change {
                    rel,
                    kind: Kind::Update,
                    new: Some(new),
                    old,
                    old_is_key,
                    commit_ts: self.commit_ts,
                    xid: self.xid,
                }))
            }
            Some(b'D') => {
                let rel = r.i32()? as u32;
                let tag = r.u8()?;
                let old = r.tuple()?;
                Ok(Some(Change {
                    rel,
                    kind: Kind::Delete,
                    new: None,
                    old: Some(old),
                    old_is_key: tag == b'K',
                    commit_ts: self.commit_ts,
                    xid: self.xid,
                }))
            }
            // Commit, Origin, Type, Truncate, Message: nothing to deliver.
            _ => Ok(None),
        }
    }

    pub(super) fn take_new_relations(&mut self) -> Vec<u32> {
        let mut v = std::mem::take(&mut self.fresh);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Read type names, RLS and primary key of a relation from the catalog.
    pub(super) async fn describe(
        &mut self,
        client: &tokio_postgres::Client,
        oid: u32,
    ) -> Result<(), String> {
        let e = |e: tokio_postgres::Error| crate::db::error_text(&e);
        let oid_i = i64::from(oid);
        let rows = client
            .query(
                "select a.attname::text, t.typname::text, format_type(a.atttypid, a.atttypmod)
                   from pg_attribute a join pg_type t on t.oid = a.atttypid
                  where a.attrelid = $1::int8::oid and a.attnum > 0 and not a.attisdropped",
                &[&oid_i],
            )
            .await
            .map_err(e)?;
        let meta = client
            .query_one(
                "select c.relrowsecurity,
                        coalesce((select array_agg(a.attname::text order by a.attnum)
                                    from pg_index i join pg_attribute a
                                      on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                                   where i.indrelid = c.oid and i.indisprimary), '{}')
                   from pg_class c where c.oid = $1::int8::oid",
                &[&oid_i],
            )
            .await
            .map_err(e)?;
        let Some(rel) = self.relations.get_mut(&oid) else {
            return Ok(());
        };
        for c in rel.columns.iter_mut() {
            if let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == c.name) {
                c.type_name = row.get(1);
                c.type_sql = row.get(2);
            }
        }
        rel.rls = meta.get(0);
        rel.pk = meta.get(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message for relation 16384 with one tuple (`kind`) of two columns: text "7", null.
    fn row_message(tag: u8, kind: u8) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend(16384i32.to_be_bytes());
        m.push(kind);
        m.extend(2i16.to_be_bytes());
        m.push(b't');
        m.extend(1i32.to_be_bytes());
        m.push(b'7');
        m.push(b'n');
        m
    }

    #[test]
    fn decodes_pgoutput() {
        let mut d = Decoder::default();
        // Relation 16384 public.t (id int4 key, name text)
        let mut rel = vec![b'R'];
        rel.extend(16384i32.to_be_bytes());
        rel.extend(b"public\0t\0");
        rel.push(b'd');
        rel.extend(2i16.to_be_bytes());
        rel.push(1);
        rel.extend(b"id\0");
        rel.extend(23i32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.push(0);
        rel.extend(b"name\0");
        rel.extend(25i32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        assert!(d.message(&rel).unwrap().is_none());
        let ins = row_message(b'I', b'N');
        let c = d.message(&ins).unwrap().unwrap();
        assert_eq!(c.kind, Kind::Insert);
        assert_eq!(c.new.unwrap(), vec![Cell::Text("7".into()), Cell::Null]);
        let del = row_message(b'D', b'K');
        let c = d.message(&del).unwrap().unwrap();
        assert!(c.old_is_key);
        assert!(d.message(&del[..6]).is_err());
        assert_eq!(d.take_new_relations(), vec![16384]);
    }
}
