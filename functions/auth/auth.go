// Package auth is the built-in auth function: it issues access tokens to
// the users of a store in NATS KV, who log in with a username and a
// password, and limits failed logins across every runner.
//
// # Logging in
//
// The function is public (a login needs no token) and answers one route,
// POST /token, below /function/auth on the gateway:
//
//	POST /function/auth/token
//	Content-Type: application/json
//
//	{"username": "alice", "password": "correct horse"}
//
// A good login answers 200 with an access token whose subject is the
// username and which holds the user's permissions, in the shape of
// RFC 6749 §5.1 (with Cache-Control: no-store and Pragma: no-cache):
//
//	{"access_token": "eyJ...", "token_type": "Bearer", "expires_in": 3600}
//
// Every other answer is an error in the platform's shape
// ({"error": {"code": ..., "message": ...}}):
//
//   - 400 bad_request: a body that is not one JSON object with exactly the
//     string fields username and password, both non-empty, or a
//     Content-Type other than application/json (a missing one is taken as
//     JSON). The platform has no code for 415, and each code keeps one
//     status, so a wrong media type is a bad request here.
//   - 413 payload_too_large: a body over 4 KiB.
//   - 401 invalid_credentials: an unknown user, a wrong password, or a
//     name that cannot be a username; all three get the same message, so
//     that the answer tells nothing about which accounts exist.
//   - 429 too_many_attempts, with Retry-After: too many failed logins for
//     the username or from the client address; the password is not
//     checked then, so even the right one is refused till the window ends.
//   - 503 unavailable: the stores in NATS KV cannot be reached, or the
//     runner was started without users, limiter or signer.
//   - 404 not_found for another path; 405 method_not_allowed, with
//     Allow: POST, for another method.
//
// # Users
//
// [Users] keeps the accounts in KV bucket [UsersBucket], one JSON [User]
// per key, passwords hashed with bcrypt; `shoal user` manages them.
//
// # Failed logins
//
// [Limiter] counts login attempts per username and per client address in
// KV bucket [FailuresBucket], which every runner shares, so the limits
// hold across a cluster.
//
// An attempt is counted before its password is checked, against both
// counters, each with a compare-and-set that refuses once the counter
// holds its limit. Only an attempt both counters took has its password
// checked: of any number of logins sent at once, to one runner or many,
// no more than the limit reach bcrypt. A failure is then counted
// already. A success clears the username's counter and gives the attempt
// back to the address's, so that the good logins of the users behind one
// address do not use up its limit; the address's failures stay counted.
// When the counters cannot be read or written, the answer is 503 and the
// password is not checked.
//
// The per-user limit lets anyone lock a user out, for what is left of a
// window, by sending wrong passwords for the name from anywhere, and
// again in the next window: the usual price of limiting guesses per
// account, which is what stops a guesser spread over many addresses.
//
// The client address is the last entry of X-Forwarded-For, which the
// gateway appends with the address of the peer it saw (an IPv6 address
// counts as its /64, the block one client usually holds). Behind a
// reverse proxy, that peer is the proxy: every client then shares the
// proxy's address and its limit. A caller straight over NATS sets its own
// headers, X-Forwarded-For included: its requests without the header all
// count as the address "nats", and one that sets it chooses the address
// it counts against. The per-address limit is meaningful only through
// the gateway; the per-user limit holds everywhere.
//
// # Logs
//
// A login's log line has the client address and user_hash, a fingerprint
// of the username (see [Handler]); the username itself only once its
// password proved right, since until then it may be a password typed in
// the wrong field. No line holds a password or a token.
package auth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/invocation"
)

// Signer issues access tokens (implemented by *token.Signer and
// *token.FileSigner).
type Signer interface {
	// Sign returns a token for subject holding permissions, valid for
	// ttl, and the time it expires.
	Sign(subject string, permissions []string, ttl time.Duration) (string, time.Time, error)
}

// Config configures the auth function.
type Config struct {
	Users   *Users
	Limiter *Limiter
	Signer  Signer
	// TTL is the lifetime of the tokens issued; 0 means DefaultTTL.
	TTL time.Duration
	// Logger receives a line per login and the store faults; nil
	// discards. It never sees a password or a token, nor a username
	// before its password proved right.
	Logger *slog.Logger
}

// DefaultTTL is the lifetime of the tokens issued when Config.TTL is 0.
const DefaultTTL = time.Hour

// TokenPath is the route of logins, below /function/auth.
const TokenPath = "/token"

// MaxRequestBody is the largest login body accepted, in bytes.
const MaxRequestBody = 4 << 10

// TokenRequest is the body of a login.
type TokenRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// TokenResponse is the body of a successful login (RFC 6749 §5.1).
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"` // always "Bearer"
	ExpiresIn   int64  `json:"expires_in"` // whole seconds until the token expires
}

// Handler returns the auth function. A Config without Users, Limiter or
// Signer still yields a handler, which answers 503 to logins: a runner
// should not serve the function then, but if it does, no login goes
// unchecked or unlimited. It panics on a negative TTL.
//
// The user_hash of its log lines is the first 12 hex digits of the
// HMAC-SHA-256 of the username under a random key of the handler's: the
// same name has the same fingerprint in one runner's log, from its start
// to its end, and another in another runner's. A plain hash would match
// across runners, but would let anyone who reads the log test guesses of
// a password typed as a username.
func Handler(cfg Config) http.Handler {
	if cfg.TTL < 0 {
		panic("auth: Config.TTL cannot be negative")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{cfg: cfg, log: log}
	rand.Read(h.logKey[:]) // never fails (crypto/rand)
	return h
}

type handler struct {
	cfg    Config
	log    *slog.Logger
	logKey [32]byte // of the username fingerprints in the log
}

// Messages of the answers a caller may compare across attempts.
const (
	msgBadCredentials = "invalid username or password"
	msgUnavailable    = "the auth function cannot reach its user store; try again later"
)

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != TokenPath {
		invocation.Errorf(http.StatusNotFound, invocation.CodeNotFound,
			"the auth function has no path %.100q: log in with POST %s", r.URL.Path, TokenPath).WriteHTTP(w)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		invocation.Errorf(http.StatusMethodNotAllowed, invocation.CodeMethodNotAllowed,
			"%s answers POST only, not %.20q", TokenPath, r.Method).WriteHTTP(w)
		return
	}
	// No answer of the token endpoint is to be cached (RFC 6749 §5.1).
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if h.cfg.Users == nil || h.cfg.Limiter == nil || h.cfg.Signer == nil {
		invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
			"this runner cannot issue tokens").WriteHTTP(w)
		return
	}
	req, ierr := readRequest(r)
	if ierr != nil {
		ierr.WriteHTTP(w)
		return
	}
	h.login(r.Context(), w, req, clientAddr(r.Header))
}

// login counts the attempt, then checks the password, then issues a
// token.
func (h *handler) login(ctx context.Context, w http.ResponseWriter, req TokenRequest, addr string) {
	// Until the password is right, the username may be anything, a
	// password typed in the wrong field among others: the log gets its
	// fingerprint only.
	log := h.log.With("addr", addr, "user_hash", h.fingerprint(req.Username))
	// The attempt is counted before the password is checked, atomically:
	// of concurrent logins, no more than the limit reach bcrypt.
	wait, err := h.cfg.Limiter.Attempt(ctx, req.Username, addr)
	if err != nil { // fail closed: a login that cannot be counted is not checked
		h.unavailable(w, log, err)
		return
	}
	if wait > 0 {
		log.Warn("login refused: too many failed logins", "retry_after", wait)
		ierr := invocation.Errorf(http.StatusTooManyRequests, invocation.CodeTooManyAttempts,
			"too many failed logins: wait %d seconds before trying again", ceilSeconds(wait))
		ierr.RetryAfter = wait
		ierr.WriteHTTP(w)
		return
	}
	user, err := h.cfg.Users.Authenticate(ctx, req.Username, req.Password)
	if errors.Is(err, ErrBadCredentials) { // counted already
		log.Info("login failed")
		invocation.Errorf(http.StatusUnauthorized, invocation.CodeBadCredentials, msgBadCredentials).WriteHTTP(w)
		return
	}
	if err != nil {
		h.unavailable(w, log, err)
		return
	}
	log = log.With("user", user.Name) // a real user, who knew the password
	if err := h.cfg.Limiter.Succeeded(ctx, user.Name, addr); err != nil {
		// The login is good; a count left behind only expires later.
		log.Warn("auth: clear the login attempts", "error", err)
	}
	tok, exp, err := h.cfg.Signer.Sign(user.Name, user.Permissions, h.cfg.TTL)
	if err != nil {
		log.Error("auth: sign a token", "error", err)
		invocation.Errorf(http.StatusInternalServerError, invocation.CodeInternal,
			"the auth function could not sign a token").WriteHTTP(w)
		return
	}
	body, err := json.Marshal(TokenResponse{
		AccessToken: tok,
		TokenType:   "Bearer",
		ExpiresIn:   max(int64(time.Until(exp)/time.Second), 0),
	})
	if err != nil { // cannot happen: strings and a number
		panic(err)
	}
	log.Info("token issued", "expires", exp)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n')) // the client went away; nothing to do
}

func (h *handler) unavailable(w http.ResponseWriter, log *slog.Logger, err error) {
	log.Error("auth: login store unavailable", "error", err)
	invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, msgUnavailable).WriteHTTP(w)
}

// fingerprint is what the log says of a username it cannot trust (see
// Handler). Across runners, correlate by address and time.
func (h *handler) fingerprint(username string) string {
	m := hmac.New(sha256.New, h.logKey[:])
	m.Write([]byte(username))
	return hex.EncodeToString(m.Sum(nil)[:6])
}

// readRequest reads and checks a login body.
func readRequest(r *http.Request) (TokenRequest, *invocation.Error) {
	var req TokenRequest
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return req, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest,
				"send the login as Content-Type: application/json, not %.100q", ct)
		}
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBody+1))
	if err != nil {
		return req, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "read the body: %v", err)
	}
	if len(data) > MaxRequestBody {
		return req, invocation.Errorf(http.StatusRequestEntityTooLarge, invocation.CodePayloadTooLarge,
			"a login body has at most %d bytes", MaxRequestBody)
	}
	const shape = `send {"username": "...", "password": "..."}`
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if errors.Is(err, io.EOF) {
			return req, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "the body is empty: %s", shape)
		}
		return req, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "the body is not a login: %v: %s", err, shape)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "the body holds more than one JSON value: %s", shape)
	}
	if req.Username == "" || req.Password == "" {
		return req, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "username and password are both required: %s", shape)
	}
	return req, nil
}

// clientAddr returns the address failed logins count against: the last
// entry of X-Forwarded-For, which the gateway appends; an IPv6 address
// as its /64. "nats" when there is none, a caller straight over NATS.
func clientAddr(h http.Header) string {
	values := h.Values("X-Forwarded-For")
	if len(values) == 0 {
		return "nats"
	}
	last := values[len(values)-1]
	last = strings.TrimSpace(last[strings.LastIndexByte(last, ',')+1:])
	if last == "" {
		return "nats"
	}
	ip, err := netip.ParseAddr(last)
	if err != nil {
		return last // not an address the gateway would write; counted as it is
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}

// ceilSeconds is d in whole seconds, rounded up as Retry-After is.
func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
