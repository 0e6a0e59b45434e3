//! A lean PostgreSQL connection for the request hot path.
//!
//! tokio-postgres ends every statement with its own Sync, so a request's BEGIN, role and
//! claims, statement and COMMIT cost PostgreSQL four ready-for-query cycles (and four
//! flushes) even when they are sent together. Here the whole request goes out as one
//! extended-protocol batch with a single Sync: PostgreSQL answers it in one flush, and the
//! request task reads the answer itself (no connection task in between).
//!
//! The protocol's messages are encoded and decoded by `postgres-protocol` (the library
//! under tokio-postgres); this module only drives them. Everything that is not the hot path
//! (migrations, LISTEN, Auth, Storage, explain/planned count) keeps using tokio-postgres.

use bytes::{Bytes, BytesMut};
use deadpool::managed;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT_OID: u32 = 25;

/// An error PostgreSQL reported, or a broken connection.
#[derive(Debug)]
pub enum WireError {
    Db(DbErrorFields),
    Io(String),
}

/// The fields of an ErrorResponse the APIs show to clients.
#[derive(Debug, Default)]
pub struct DbErrorFields {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Db(d) => write!(f, "{} ({})", d.message, d.code),
            WireError::Io(s) => f.write_str(s),
        }
    }
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e.to_string())
    }
}

/// One statement of a batch: its text and its parameters, sent as text. `text_params`
/// declares every parameter `text`; otherwise PostgreSQL infers their types (like untyped
/// literals). A `name` makes it a prepared statement of the connection: parsed the first
/// time, then only bound and executed (for the server's own fixed statements; one name
/// must always stand for one text and one set of parameter types).
pub struct Step<'a> {
    pub sql: &'a str,
    pub params: &'a [&'a str],
    pub text_params: bool,
    pub name: Option<&'static str>,
}

impl<'a> Step<'a> {
    pub fn plain(sql: &'a str) -> Step<'a> {
        Step {
            sql,
            params: &[],
            text_params: false,
            name: None,
        }
    }

    /// A fixed statement without parameters, prepared once per connection.
    pub fn named(name: &'static str, sql: &'a str) -> Step<'a> {
        Step {
            name: Some(name),
            ..Step::plain(sql)
        }
    }
}

/// A row in text format: one value per column, `None` for NULL.
pub struct Row(Vec<Option<Bytes>>);

impl Row {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn text(&self, i: usize) -> Option<&str> {
        self.0
            .get(i)?
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The value's bytes, shared with the read buffer (no copy).
    pub fn bytes(&self, i: usize) -> Option<Bytes> {
        self.0.get(i)?.clone()
    }

    pub fn string(&self, i: usize) -> Option<String> {
        self.text(i).map(str::to_string)
    }

    pub fn int(&self, i: usize) -> Option<i64> {
        self.text(i)?.parse().ok()
    }
}

/// Where and as whom to connect (taken from a tokio-postgres config that names one TCP
/// host and needs no TLS).
#[derive(Clone)]
pub struct WireConfig {
    host: String,
    port: u16,
    user: String,
    password: Option<Vec<u8>>,
    dbname: String,
    /// The URL's `options` (e.g. `-c search_path=...`), passed on at startup.
    options: Option<String>,
    /// `replication=database` at startup: a walsender session (logical replication).
    replication: bool,
    application_name: &'static str,
}

impl WireConfig {
    /// `None` when the configuration needs something this client does not do (a Unix
    /// socket, several hosts, required TLS): callers then stay on tokio-postgres.
    pub fn from_config(cfg: &tokio_postgres::Config) -> Option<WireConfig> {
        use tokio_postgres::config::{Host, SslMode};
        if cfg.get_ssl_mode() == SslMode::Require || cfg.get_hosts().len() != 1 {
            return None;
        }
        let Host::Tcp(host) = &cfg.get_hosts()[0] else {
            return None;
        };
        let user = cfg.get_user()?.to_string();
        Some(WireConfig {
            host: host.clone(),
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            dbname: cfg.get_dbname().unwrap_or(&user).to_string(),
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            options: cfg.get_options().map(str::to_string),
            replication: false,
            application_name: "oxibase",
        })
    }

    /// The same login as a logical replication session (`replication=database`), named
    /// `application_name` in `pg_stat_replication`.
    pub fn replication(mut self, application_name: &'static str) -> WireConfig {
        self.replication = true;
        self.application_name = application_name;
        self
    }
}

pub struct WireConn {
    stream: TcpStream,
    wbuf: BytesMut,
    rbuf: BytesMut,
    /// Set while a batch is in flight: a connection whose request was dropped half-way is
    /// in an unknown state and is not reused.
    busy: bool,
    /// The named statements this connection has prepared.
    prepared: Vec<&'static str>,
}

impl WireConn {
    pub async fn connect(cfg: &WireConfig) -> Result<WireConn, WireError> {
        let stream = TcpStream::connect((cfg.host.as_str(), cfg.port)).await?;
        stream.set_nodelay(true)?;
        let mut c = WireConn {
            stream,
            wbuf: BytesMut::with_capacity(4096),
            rbuf: BytesMut::with_capacity(8192),
            busy: true,
            prepared: Vec::new(),
        };
        let mut params = vec![
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
            ("client_encoding", "UTF8"),
            ("application_name", cfg.application_name),
        ];
        if cfg.replication {
            params.push(("replication", "database"));
        }
        if let Some(o) = &cfg.options {
            params.push(("options", o.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut c.wbuf)?;
        c.flush().await?;
        c.authenticate(cfg).await?;
        // Parameter statuses and the backend key, then ready.
        loop {
            match c.next().await? {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(b) => return Err(WireError::Db(error_fields(&b))),
                _ => {}
            }
        }
        c.busy = false;
        Ok(c)
    }

    /// The connection's socket and whatever was read past the last message, for a caller
    /// that speaks a part of the protocol this client does not (CopyBoth streaming).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.rbuf)
    }

    async fn authenticate(&mut self, cfg: &WireConfig) -> Result<(), WireError> {
        let password = || {
            cfg.password
                .as_deref()
                .ok_or_else(|| WireError::Io("the database asks for a password".into()))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.wbuf)?;
                }
                Message::AuthenticationMd5Password(b) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        cfg.user.as_bytes(),
                        password()?,
                        b.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                }
                Message::AuthenticationSasl(b) => {
                    let mut mechs = b.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechs.next()? {
                        found |= m == "SCRAM-SHA-256";
                    }
                    if !found {
                        return Err(WireError::Io("no supported SASL mechanism".into()));
                    }
                    let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.wbuf)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(b) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| WireError::Io("unexpected SASL message".into()))?;
                    s.update(b.data())?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)?;
                }
                Message::AuthenticationSaslFinal(b) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| WireError::Io("unexpected SASL message".into()))?;
                    s.finish(b.data())?;
                    continue;
                }
                Message::ErrorResponse(b) => return Err(WireError::Db(error_fields(&b))),
                _ => return Err(WireError::Io("unsupported authentication method".into())),
            }
            self.flush().await?;
        }
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn next(&mut self) -> Result<Message, WireError> {
        loop {
            if let Some(m) = Message::parse(&mut self.rbuf)? {
                return Ok(m);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(WireError::Io("the database closed the connection".into()));
            }
        }
    }

    /// Send the steps as one batch with a single Sync and return each step's rows. The
    /// first error stops the batch (PostgreSQL skips the rest); if the batch had opened a
    /// transaction block, it is rolled back before the connection is handed on.
    pub async fn pipeline(&mut self, steps: &[Step<'_>]) -> Result<Vec<Vec<Row>>, WireError> {
        self.busy = true;
        self.wbuf.clear();
        // The Parse messages sent, in order, with the name of each named one: a name counts
        // as prepared once its ParseComplete arrives (an earlier error skips the Parse).
        let mut parses: Vec<Option<&'static str>> = Vec::with_capacity(steps.len());
        for s in steps {
            let name = s.name.unwrap_or("");
            if s.name.is_none() || !self.prepared.contains(&name) {
                let types =
                    std::iter::repeat_n(if s.text_params { TEXT_OID } else { 0 }, s.params.len());
                frontend::parse(name, s.sql, types, &mut self.wbuf)?;
                parses.push(s.name);
            }
            frontend::bind(
                "",
                name,
                [0i16],
                s.params.iter(),
                |p, buf| {
                    buf.extend_from_slice(p.as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                },
                [0i16],
                &mut self.wbuf,
            )
            .map_err(|e| match e {
                frontend::BindError::Conversion(e) => WireError::Io(e.to_string()),
                frontend::BindError::Serialization(e) => WireError::Io(e.to_string()),
            })?;
            frontend::execute("", 0, &mut self.wbuf)?;
        }
        frontend::sync(&mut self.wbuf);
        self.flush().await?;
        let mut out: Vec<Vec<Row>> = Vec::with_capacity(steps.len());
        let mut current: Vec<Row> = Vec::new();
        let mut error: Option<DbErrorFields> = None;
        let mut parsed = 0;
        let status = loop {
            match self.next().await? {
                Message::ParseComplete => {
                    if let Some(Some(n)) = parses.get(parsed) {
                        self.prepared.push(n);
                    }
                    parsed += 1;
                }
                Message::DataRow(body) => {
                    let buf = body.buffer_bytes();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next()? {
                        row.push(r.map(|r| buf.slice(r)));
                    }
                    current.push(Row(row));
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {
                    out.push(std::mem::take(&mut current));
                }
                Message::ErrorResponse(b) if error.is_none() => {
                    error = Some(error_fields(&b));
                }
                Message::ReadyForQuery(b) => break b.status(),
                _ => {}
            }
        };
        if status == b'E' {
            // An explicit transaction block failed: end it here.
            frontend::query("ROLLBACK", &mut self.wbuf)?;
            self.flush().await?;
            loop {
                if let Message::ReadyForQuery(_) = self.next().await? {
                    break;
                }
            }
        } else if status == b'T' {
            // A block left open (the steps did not end it): the connection must not carry
            // it to the next request.
            return Err(WireError::Io("a batch left its transaction open".into()));
        }
        self.busy = false;
        match error {
            Some(e) => Err(WireError::Db(e)),
            None => Ok(out),
        }
    }
}

fn error_fields(b: &postgres_protocol::message::backend::ErrorResponseBody) -> DbErrorFields {
    let mut d = DbErrorFields::default();
    let mut fields = b.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => d.code = v,
            b'M' => d.message = v,
            b'D' => d.detail = Some(v),
            b'H' => d.hint = Some(v),
            _ => {}
        }
    }
    d
}

/// Pool of lean connections (deadpool, like the tokio-postgres pool).
pub struct Manager(pub WireConfig);

impl managed::Manager for Manager {
    type Type = WireConn;
    type Error = WireError;

    async fn create(&self) -> Result<WireConn, WireError> {
        WireConn::connect(&self.0).await
    }

    async fn recycle(
        &self,
        conn: &mut WireConn,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<WireError> {
        if conn.busy {
            return Err(managed::RecycleError::message("dropped mid-request"));
        }
        // An idle connection has nothing to read. End of stream, or a message (PostgreSQL
        // sends a FATAL error before it closes a terminated backend), means it is gone.
        let mut probe = [0u8; 1];
        match conn.stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            _ => Err(managed::RecycleError::message("closed by the database")),
        }
    }
}

pub type Pool = managed::Pool<Manager>;

pub fn make_pool(cfg: WireConfig, size: usize) -> Pool {
    make_pool_with(cfg, size, super::PoolTimeouts::default())
}

/// The lean pool with the same wait and create timeouts as the request pool.
pub fn make_pool_with(cfg: WireConfig, size: usize, t: super::PoolTimeouts) -> Pool {
    Pool::builder(Manager(cfg))
        .max_size(size)
        .timeouts(t.deadpool())
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("pool config is valid")
}
