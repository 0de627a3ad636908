//! JWTs for the tests: an ES256 signing key, its JWKS, signed tokens with chosen claims, and
//! the `envoy.filters.http.jwt_authn` filter that verifies them and puts their payload in the
//! dynamic metadata (`payload_in_metadata: payload`), where Istio's RBAC and meshauthz read it.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signer with one fresh P-256 key.
#[derive(Debug)]
pub struct JwtIssuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl JwtIssuer {
    pub fn new() -> JwtIssuer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key");
        JwtIssuer { key, rng }
    }

    /// The public key as a JWKS (`kid` `k1`).
    pub fn jwks(&self) -> String {
        // Uncompressed point: 0x04, then x and y.
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
        .to_string()
    }

    /// A compact ES256 JWS over `claims`.
    pub fn token(&self, claims: &Value) -> String {
        let header = b64(json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})
            .to_string()
            .as_bytes());
        let payload = b64(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let sig = self.key.sign(&self.rng, signing_input.as_bytes()).expect("sign");
        format!("{signing_input}.{}", b64(sig.as_ref()))
    }
}

impl Default for JwtIssuer {
    fn default() -> Self {
        JwtIssuer::new()
    }
}

/// The jwt_authn HTTP filter for `jwks`: any issuer, the token from `Authorization: Bearer`,
/// kept for the upstream; a request without a token passes on without metadata (as Istio's
/// `RequestAuthentication` does), a token that does not verify gets 401.
pub fn jwt_authn_filter(jwks: &str) -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"test": {
                "local_jwks": {"inline_string": jwks},
                "payload_in_metadata": "payload",
                "forward": true,
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "test"},
                {"allow_missing": {}},
            ]}}}],
        },
    })
}
