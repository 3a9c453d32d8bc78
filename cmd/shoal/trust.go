package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/token"
)

// Token defaults: the issuer and audience of the tokens Shoal signs.
const (
	defaultIssuer   = "shoal"
	defaultAudience = "shoal"
	defaultTokenTTL = time.Hour
)

// The data directory's layout, below --data.
const (
	credentialsDir = "credentials"       // NATS NKey seeds, one per role
	keyFileName    = "keys/signing.jwks" // private token signing keys
)

func credentialsPath(data string) string { return filepath.Join(data, credentialsDir) }
func keyFilePath(data string) string     { return filepath.Join(data, keyFileName) }

// trustFlags say which tokens a gateway or runner accepts: Shoal's own,
// verified with the keys published in NATS KV (and optionally HS256
// shared secrets), and those of an external OpenID Connect issuer.
type trustFlags struct {
	issuer       string
	audience     string
	leeway       time.Duration
	hsKeys       string
	oidcIssuer   string
	oidcAudience string
	oidcJWKS     string
}

func (t *trustFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.issuer, "token-issuer", defaultIssuer, "iss of the tokens Shoal signs")
	fs.StringVar(&t.audience, "token-audience", defaultAudience, "aud of the tokens Shoal signs")
	fs.DurationVar(&t.leeway, "token-leeway", token.DefaultLeeway, "clock skew allowed when checking exp, nbf and iat (at most 5m; 0 means the default)")
	fs.StringVar(&t.hsKeys, "hs256-keys", "", "JWK set file of HS256 shared secrets to accept too (explicit opt-in; asymmetric keys are the default)")
	fs.StringVar(&t.oidcIssuer, "oidc-issuer", "", "also accept tokens from this OpenID Connect issuer (exact iss)")
	fs.StringVar(&t.oidcAudience, "oidc-audience", "", "aud the external issuer's tokens must carry")
	fs.StringVar(&t.oidcJWKS, "oidc-jwks", "", "the external issuer's JWKS: an https:// URL (its jwks_uri) or a file")
}

func (t *trustFlags) check() error {
	if (t.oidcIssuer == "") != (t.oidcJWKS == "") {
		return errors.New("--oidc-issuer and --oidc-jwks go together")
	}
	if t.oidcIssuer != "" && t.oidcAudience == "" {
		return errors.New("--oidc-audience is required with --oidc-issuer: tokens minted for other applications of the same issuer must not pass")
	}
	return nil
}

// needsTokens reports whether any function of m needs a token.
func needsTokens(m *manifest.Manifest) bool {
	for _, fn := range m.Functions {
		if !fn.Public {
			return true
		}
	}
	return false
}

// trust is a verifier with what feeds it.
type trust struct {
	verifier *token.Verifier
	// keys follows the published public keys; nil when none are
	// published and an external issuer alone is trusted.
	keys *keyring.Keyring
	// cancel ends the background refresh of an external issuer's keys.
	cancel context.CancelFunc
}

// jwks serves the published public keys for the gateway's JWKS route.
func (t *trust) jwks() ([]byte, error) {
	if t.keys == nil {
		return []byte(`{"keys":[]}`), nil
	}
	return t.keys.JWKS()
}

// stop ends the key watch and refresh.
func (t *trust) stop() {
	if t.cancel != nil {
		t.cancel()
	}
	if t.keys != nil {
		if err := t.keys.Stop(); err != nil {
			logger.Warn("stop watching the token keys", "error", err)
		}
	}
}

// build follows the published keys on js and builds the verifier. local
// are shared secrets the caller holds (shoal up's HS256 keys, if any).
// Unless required (some function needs a token), having no key at all is
// not an error: the verifier is then nil.
func (t *trustFlags) build(ctx context.Context, js jetstream.JetStream, local []jwkset.JWK, required bool) (*trust, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	cfg := token.VerifierConfig{Leeway: t.leeway}
	var tr trust
	var shoalKeys token.Sources
	kr, err := keyring.Watch(ctx, js, logger.With("component", "keyring"))
	switch {
	case err == nil:
		tr.keys = kr
		shoalKeys = append(shoalKeys, kr)
	case errors.Is(err, keyring.ErrNoKeys) && (t.oidcIssuer != "" || !required):
		logger.Warn("no Shoal token signing keys are published on this NATS; Shoal's own tokens are not accepted")
	default:
		return nil, err
	}
	hs := local
	if t.hsKeys != "" {
		keys, err := token.ReadKeyFile(t.hsKeys)
		if err != nil {
			tr.stop()
			return nil, fmt.Errorf("--hs256-keys: %w", err)
		}
		hs = append(hs, keys...)
	}
	var secrets []jwkset.JWK
	for _, k := range hs {
		if k.Marshal().KTY == jwkset.KtyOct {
			secrets = append(secrets, k)
		}
	}
	if len(secrets) > 0 {
		ks, err := token.StaticKeys(secrets...)
		if err != nil {
			tr.stop()
			return nil, fmt.Errorf("HS256 keys: %w", err)
		}
		shoalKeys = append(shoalKeys, ks)
		cfg.Algorithms = []string{token.EdDSA, token.ES256, token.RS256, token.HS256}
	}
	if len(shoalKeys) > 0 {
		cfg.Issuers = append(cfg.Issuers, token.Issuer{Issuer: t.issuer, Audience: t.audience, Keys: shoalKeys})
	}
	if t.oidcIssuer != "" {
		// The refresh outlives start-up: it runs until stop.
		bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
		tr.cancel = cancel
		ks, err := t.oidcKeys(bg)
		if err != nil {
			tr.stop()
			return nil, err
		}
		cfg.Issuers = append(cfg.Issuers, token.Issuer{Issuer: t.oidcIssuer, Audience: t.oidcAudience, Keys: ks})
	}
	if len(cfg.Issuers) == 0 {
		return &tr, nil // nothing needs a token
	}
	v, err := token.NewVerifier(cfg)
	if err != nil {
		tr.stop()
		return nil, err
	}
	tr.verifier = v
	return &tr, nil
}

// oidcKeys loads the external issuer's keys from a URL, kept fresh, or a
// file.
func (t *trustFlags) oidcKeys(ctx context.Context) (token.KeySource, error) {
	if u := t.oidcJWKS; len(u) > 8 && (u[:8] == "https://" || u[:7] == "http://") {
		ks, err := token.RemoteKeys(ctx, u, token.DefaultRefresh)
		if err != nil {
			return nil, fmt.Errorf("--oidc-jwks %s: %w", u, err)
		}
		return ks, nil
	}
	ks, err := token.FileKeys(t.oidcJWKS)
	if err != nil {
		return nil, fmt.Errorf("--oidc-jwks: %w", err)
	}
	return ks, nil
}
