package token

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestAuthorize(t *testing.T) {
	v := mustVerifier(t, mustStatic(t, testKey(EdDSA)), VerifierConfig{Now: newClock(t0).now})
	tok := signWith(t, testKey(EdDSA), claimsAt(t0)) // permissions: echo
	expired := signWith(t, testKey(EdDSA), with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-time.Hour)) }))
	// One character of the signature changed.
	forged := []byte(tok)
	if forged[len(forged)-10] != 'A' {
		forged[len(forged)-10] = 'A'
	} else {
		forged[len(forged)-10] = 'B'
	}
	tests := []struct {
		name          string
		authorization string
		required      []string
		status        int // 0: authorized
		code          string
		description   string // in the description, when set
		reason        string // AuthError.Reason
	}{
		{"permission held", "Bearer " + tok, []string{"echo"}, 0, "", "", ""},
		{"nothing required", "Bearer " + tok, nil, 0, "", "", ""},
		{"scheme in lower case", "bearer " + tok, []string{"echo"}, 0, "", "", ""},
		{"scheme in upper case, extra spaces", "BEARER   " + tok + " ", []string{"echo"}, 0, "", "", ""},
		{"missing header", "", []string{"echo"}, 401, CodeInvalidToken, "no bearer token", ReasonMissing},
		{"blank header", "   ", nil, 401, CodeInvalidToken, "no bearer token", ReasonMissing},
		{"Basic", "Basic x", nil, 401, CodeInvalidToken, "not a Bearer token", ReasonMalformed},
		{"token without scheme", tok, nil, 401, CodeInvalidToken, "not a Bearer token", ReasonMalformed},
		{"Bearer alone", "Bearer", nil, 401, CodeInvalidToken, "empty", ReasonMissing},
		{"Bearer with an empty token", "Bearer ", nil, 401, CodeInvalidToken, "empty", ReasonMissing},
		{"Bearer with spaces only", "Bearer    ", nil, 401, CodeInvalidToken, "empty", ReasonMissing},
		{"garbage token", "Bearer garbage", nil, 401, CodeInvalidToken, "malformed", ReasonMalformed},
		{"forged signature", "Bearer " + string(forged), nil, 401, CodeInvalidToken, "signature", ReasonInvalid},
		{"expired token", "Bearer " + expired, []string{"echo"}, 401, CodeInvalidToken, "expired", ReasonExpired},
		{"insufficient scope", "Bearer " + tok, []string{"echo", "admin"}, 403, CodeInsufficientScope, "lacks a permission the function requires: admin", ReasonInsufficientScope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, aerr := v.Authorize(context.Background(), tt.authorization, tt.required)
			if tt.status == 0 {
				if aerr != nil {
					t.Fatalf("Authorize: %v", aerr)
				}
				if c.Subject != "alice" {
					t.Errorf("claims %+v", c)
				}
				return
			}
			if aerr == nil {
				t.Fatal("Authorize let the request through")
			}
			if c != nil {
				t.Error("Authorize returned claims with its error")
			}
			if aerr.Reason != tt.reason {
				t.Errorf("reason %q, want %q", aerr.Reason, tt.reason)
			}
			if aerr.Status != tt.status || aerr.Code != tt.code || !strings.Contains(aerr.Description, tt.description) {
				t.Errorf("got %d %s %q, want %d %s and a description saying %q", aerr.Status, aerr.Code, aerr.Description, tt.status, tt.code, tt.description)
			}
			ch := aerr.Challenge()
			if !strings.HasPrefix(ch, `Bearer realm="shoal", error="`+tt.code+`", error_description="`) {
				t.Errorf("challenge %s", ch)
			}
			if tt.code == CodeInsufficientScope {
				if !slices.Equal(aerr.Scope, tt.required) || !strings.HasSuffix(ch, `, scope="`+strings.Join(tt.required, " ")+`"`) {
					t.Errorf("scope %q, challenge %s; want scope %q", aerr.Scope, ch, tt.required)
				}
			} else if aerr.Scope != nil || strings.Contains(ch, "scope=") {
				t.Errorf("scope %q, challenge %s, on a %s", aerr.Scope, ch, tt.code)
			}
			for _, s := range []string{aerr.Error(), ch} {
				if strings.Contains(s, tok) || strings.Contains(s, expired) {
					t.Errorf("%q quotes the token", s)
				}
			}
		})
	}
}

func TestAuthorizeHeader(t *testing.T) {
	v := mustVerifier(t, mustStatic(t, testKey(EdDSA)), VerifierConfig{Now: newClock(t0).now})
	bearer := "Bearer " + signWith(t, testKey(EdDSA), claimsAt(t0))
	ctx := context.Background()
	if _, aerr := v.AuthorizeHeader(ctx, []string{bearer}, []string{"echo"}); aerr != nil {
		t.Errorf("one header: %v", aerr)
	}
	if _, aerr := v.AuthorizeHeader(ctx, nil, nil); aerr == nil || aerr.Description != "no bearer token" {
		t.Errorf("no header: %v", aerr)
	}
	if _, aerr := v.AuthorizeHeader(ctx, []string{bearer, bearer}, nil); aerr == nil || aerr.Status != http.StatusUnauthorized {
		t.Errorf("two headers: %v", aerr)
	}
}

func TestChallenge(t *testing.T) {
	tests := []struct {
		name string
		err  AuthError
		want string
	}{
		{"invalid token",
			AuthError{Status: 401, Code: CodeInvalidToken, Description: "the token has expired"},
			`Bearer realm="shoal", error="invalid_token", error_description="the token has expired"`},
		{"insufficient scope",
			AuthError{Status: 403, Code: CodeInsufficientScope, Description: "lacks admin", Scope: []string{"echo", "admin"}},
			`Bearer realm="shoal", error="insufficient_scope", error_description="lacks admin", scope="echo admin"`},
		{"quotes and backslashes escaped",
			AuthError{Code: CodeInvalidToken, Description: `say "hi" \ bye`},
			`Bearer realm="shoal", error="invalid_token", error_description="say \"hi\" \\ bye"`},
		{"one line of ASCII",
			AuthError{Code: CodeInvalidToken, Description: "line\r\nbreak, tab\t, é"},
			`Bearer realm="shoal", error="invalid_token", error_description="line??break, tab?, ??"`},
		{"scope escaped too",
			AuthError{Code: CodeInsufficientScope, Description: "d", Scope: []string{`a"b`}},
			`Bearer realm="shoal", error="insufficient_scope", error_description="d", scope="a\"b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Challenge(); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	e := &AuthError{Code: CodeInvalidToken, Description: "no bearer token"}
	if got := e.Error(); got != "invalid_token: no bearer token" {
		t.Errorf("Error() = %q", got)
	}
}
