//! The /auth/v1 route table: method and path to an [`Endpoint`] and the [`Privilege`] it
//! needs (pure, tested exhaustively).

/// Every /auth/v1 route, parsed from method and path alone (no I/O), so the table can be
/// tested exhaustively. Sub-APIs (admin, factors, passkeys) route their own tails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Settings,
    Jwks,
    Signup,
    Token,
    GetUser,
    UpdateUser,
    Logout,
    Reauthenticate,
    Otp,
    VerifyPost,
    VerifyGet,
    Recover,
    Resend,
    Inbox,
    Invite,
    Admin(Vec<String>),
    Factors(Vec<String>),
    Passkeys(Vec<String>),
    /// Known GoTrue features this server answers with GoTrue's "disabled" error.
    Disabled(DisabledFeature),
    /// Known GoTrue endpoints not built here (501 naming the endpoint).
    Unsupported,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisabledFeature {
    ExternalProvider,
    ManualLinking,
    Saml,
}

/// Who may call an endpoint: [`route`] makes the check and hands the handler its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Anyone with (or without) an API key.
    Public,
    /// A user's access token.
    User,
    /// service_role or supabase_admin.
    Admin,
}

impl Endpoint {
    pub fn parse(method: &str, path: &str) -> Endpoint {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let tail = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match (method, segs.as_slice()) {
            ("GET", ["health"]) => Endpoint::Health,
            ("GET", ["settings"]) => Endpoint::Settings,
            ("GET", [".well-known", "jwks.json"]) => Endpoint::Jwks,
            ("POST", ["signup"]) => Endpoint::Signup,
            ("POST", ["token"]) => Endpoint::Token,
            ("GET", ["user"]) => Endpoint::GetUser,
            ("PUT", ["user"]) => Endpoint::UpdateUser,
            ("POST", ["logout"]) => Endpoint::Logout,
            ("GET", ["reauthenticate"]) => Endpoint::Reauthenticate,
            ("POST", ["otp"]) | ("POST", ["magiclink"]) => Endpoint::Otp,
            ("POST", ["verify"]) => Endpoint::VerifyPost,
            ("GET", ["verify"]) => Endpoint::VerifyGet,
            ("POST", ["recover"]) => Endpoint::Recover,
            ("POST", ["resend"]) => Endpoint::Resend,
            ("GET", ["inbox"]) => Endpoint::Inbox,
            ("POST", ["invite"]) => Endpoint::Invite,
            (_, ["admin", "sso" | "custom-providers", ..])
            | (_, ["oauth" | "scim", ..])
            | (_, [".well-known", "openid-configuration" | "oauth-authorization-server"]) => {
                Endpoint::Unsupported
            }
            (_, ["admin", rest @ ..]) => Endpoint::Admin(tail(rest)),
            (_, ["factors", rest @ ..]) => Endpoint::Factors(tail(rest)),
            (_, ["passkeys", rest @ ..]) => Endpoint::Passkeys(tail(rest)),
            ("GET", ["authorize"]) | (_, ["callback"]) => {
                Endpoint::Disabled(DisabledFeature::ExternalProvider)
            }
            ("GET", ["user", "identities", "authorize"])
            | ("DELETE", ["user", "identities", _]) => {
                Endpoint::Disabled(DisabledFeature::ManualLinking)
            }
            ("POST", ["sso"]) | ("GET" | "POST", ["sso", ..]) => {
                Endpoint::Disabled(DisabledFeature::Saml)
            }
            _ => Endpoint::Unknown,
        }
    }

    pub fn privilege(&self) -> Privilege {
        match self {
            Endpoint::GetUser
            | Endpoint::UpdateUser
            | Endpoint::Logout
            | Endpoint::Reauthenticate
            | Endpoint::Factors(_) => Privilege::User,
            Endpoint::Admin(_) | Endpoint::Invite | Endpoint::Inbox => Privilege::Admin,
            Endpoint::Unsupported => Privilege::Public,
            Endpoint::Passkeys(rest) => match rest.first().map(String::as_str) {
                Some("authentication") => Privilege::Public,
                _ => Privilege::User,
            },
            _ => Privilege::Public,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        use Endpoint as E;
        use Privilege as P;
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let table: Vec<(&str, &str, Endpoint, Privilege)> = vec![
            ("GET", "health", E::Health, P::Public),
            ("GET", "settings", E::Settings, P::Public),
            ("GET", ".well-known/jwks.json", E::Jwks, P::Public),
            ("POST", "signup", E::Signup, P::Public),
            ("POST", "token", E::Token, P::Public),
            ("GET", "user", E::GetUser, P::User),
            ("PUT", "user", E::UpdateUser, P::User),
            ("POST", "user", E::Unknown, P::Public),
            ("POST", "logout", E::Logout, P::User),
            ("GET", "logout", E::Unknown, P::Public),
            ("GET", "reauthenticate", E::Reauthenticate, P::User),
            ("POST", "otp", E::Otp, P::Public),
            ("POST", "magiclink", E::Otp, P::Public),
            ("POST", "verify", E::VerifyPost, P::Public),
            ("GET", "verify", E::VerifyGet, P::Public),
            ("POST", "recover", E::Recover, P::Public),
            ("POST", "resend", E::Resend, P::Public),
            ("GET", "inbox", E::Inbox, P::Admin),
            ("POST", "invite", E::Invite, P::Admin),
            ("GET", "admin/users", E::Admin(v(&["users"])), P::Admin),
            (
                "DELETE",
                "admin/users/x",
                E::Admin(v(&["users", "x"])),
                P::Admin,
            ),
            ("POST", "factors", E::Factors(vec![]), P::User),
            (
                "POST",
                "factors/f/verify",
                E::Factors(v(&["f", "verify"])),
                P::User,
            ),
            (
                "POST",
                "passkeys/authentication/options",
                E::Passkeys(v(&["authentication", "options"])),
                P::Public,
            ),
            (
                "POST",
                "passkeys/registration/options",
                E::Passkeys(v(&["registration", "options"])),
                P::User,
            ),
            ("GET", "passkeys", E::Passkeys(vec![]), P::User),
            (
                "GET",
                "authorize",
                E::Disabled(DisabledFeature::ExternalProvider),
                P::Public,
            ),
            (
                "GET",
                "user/identities/authorize",
                E::Disabled(DisabledFeature::ManualLinking),
                P::Public,
            ),
            ("POST", "sso", E::Disabled(DisabledFeature::Saml), P::Public),
            ("GET", "nope", E::Unknown, P::Public),
            ("GET", "admin/audit", E::Admin(v(&["audit"])), P::Admin),
            ("GET", "admin/sso/providers", E::Unsupported, P::Public),
            ("POST", "oauth/token", E::Unsupported, P::Public),
            (
                "GET",
                ".well-known/openid-configuration",
                E::Unsupported,
                P::Public,
            ),
            ("GET", "", E::Unknown, P::Public),
        ];
        for (m, path, want, privilege) in table {
            let got = Endpoint::parse(m, path);
            assert_eq!(got, want, "{m} {path}");
            assert_eq!(got.privilege(), privilege, "{m} {path}");
        }
    }
}
