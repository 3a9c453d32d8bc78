package token

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
)

// RFC 6750 error codes, as AuthError.Code.
const (
	// CodeInvalidToken (401): no bearer token, or one that does not
	// verify.
	CodeInvalidToken = "invalid_token"
	// CodeInsufficientScope (403): the token lacks a required permission.
	CodeInsufficientScope = "insufficient_scope"
)

// Why a token is refused, as AuthError.Reason: a small fixed set, fit
// for a metric label (the gateway's shoal_gateway_auth_failures_total).
const (
	// ReasonMissing: the request has no bearer token.
	ReasonMissing = "missing"
	// ReasonMalformed: the Authorization header or the token cannot be
	// read (not Bearer, several headers, not a JWT, too large).
	ReasonMalformed = "malformed"
	// ReasonExpired: the token's exp has passed.
	ReasonExpired = "expired"
	// ReasonInvalid: the token does not verify (signature, key id,
	// issuer, audience, algorithm, other time claims).
	ReasonInvalid = "invalid"
	// ReasonKeyUnavailable: the token's key could not be looked up (a
	// fault of the key source, not of the token).
	ReasonKeyUnavailable = "key_unavailable"
	// ReasonInsufficientScope: the token verifies but lacks a
	// permission the function requires (403).
	ReasonInsufficientScope = "insufficient_scope"
)

// Realm is the realm of Shoal's WWW-Authenticate challenges.
const Realm = "shoal"

// AuthError is a request refused for its token: what to answer.
type AuthError struct {
	// Status is the HTTP status: 401 or 403.
	Status int
	// Code is CodeInvalidToken (401) or CodeInsufficientScope (403).
	Code string
	// Description says why, for people; it never contains the token.
	Description string
	// Scope, for CodeInsufficientScope, are the permissions required.
	Scope []string
	// Reason classifies the refusal: one of the Reason constants.
	Reason string
}

// Error formats the error as "code: description".
func (e *AuthError) Error() string { return e.Code + ": " + e.Description }

// Challenge returns the value of the WWW-Authenticate header to send with
// the error (RFC 6750 section 3): one line of ASCII, such as
//
//	Bearer realm="shoal", error="invalid_token", error_description="the token has expired"
//
// with scope="a b" added for CodeInsufficientScope. Quotes and
// backslashes are escaped; control and non-ASCII characters become '?'.
func (e *AuthError) Challenge() string {
	var b strings.Builder
	b.Grow(64 + len(e.Description))
	b.WriteString(`Bearer realm="` + Realm + `", error="`)
	writeQuoted(&b, e.Code)
	b.WriteString(`", error_description="`)
	writeQuoted(&b, e.Description)
	b.WriteByte('"')
	if len(e.Scope) > 0 {
		b.WriteString(`, scope="`)
		for i, s := range e.Scope {
			if i > 0 {
				b.WriteByte(' ')
			}
			writeQuoted(&b, s)
		}
		b.WriteByte('"')
	}
	return b.String()
}

// writeQuoted writes s as the inside of an HTTP quoted-string.
func writeQuoted(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteByte(c)
		}
	}
}

// Authorize checks authorization, the value of an Authorization header
// ("Bearer <token>", the scheme in any case), against the permissions a
// function requires: all of them are needed, and none means any valid
// token will do. It returns the token's claims, or what to answer.
func (v *Verifier) Authorize(ctx context.Context, authorization string, required []string) (*Claims, *AuthError) {
	raw, aerr := bearer(authorization)
	if aerr != nil {
		return nil, aerr
	}
	c, err := v.Verify(ctx, raw)
	if err != nil {
		return nil, unauthorized(describe(err))
	}
	if !c.Allows(required) {
		return nil, &AuthError{
			Status:      http.StatusForbidden,
			Code:        CodeInsufficientScope,
			Description: "the token lacks a permission the function requires: " + strings.Join(c.missing(required), ", "),
			Scope:       slices.Clone(required),
			Reason:      ReasonInsufficientScope,
		}
	}
	return c, nil
}

// AuthorizeHeader is Authorize for the values of the Authorization
// header of a request, as in r.Header["Authorization"]: none is a missing
// token, and more than one is refused.
func (v *Verifier) AuthorizeHeader(ctx context.Context, values []string, required []string) (*Claims, *AuthError) {
	switch len(values) {
	case 0:
		return v.Authorize(ctx, "", required)
	case 1:
		return v.Authorize(ctx, values[0], required)
	}
	return nil, unauthorized(ReasonMalformed, "the request has more than one Authorization header")
}

func unauthorized(reason, description string) *AuthError {
	return &AuthError{Status: http.StatusUnauthorized, Code: CodeInvalidToken, Description: description, Reason: reason}
}

// bearer returns the token of a Bearer Authorization header value.
func bearer(authorization string) (string, *AuthError) {
	if strings.TrimSpace(authorization) == "" {
		return "", unauthorized(ReasonMissing, "no bearer token")
	}
	scheme, rest, _ := strings.Cut(authorization, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", unauthorized(ReasonMalformed, "the Authorization header is not a Bearer token")
	}
	raw := strings.Trim(rest, " ")
	if raw == "" {
		return "", unauthorized(ReasonMissing, "the Bearer token is empty")
	}
	return raw, nil
}

// describe returns the class of a Verify error and its reason, fit for
// the client.
func describe(err error) (kind, reason string) {
	var ie *invalidError
	if errors.As(err, &ie) {
		return ie.kind, ie.reason
	}
	return errDoesNotVerify.kind, errDoesNotVerify.reason
}
