// Package auth is the built-in auth function, which issues access tokens
// for a username and password.
//
// Token issuing arrives with the authentication work (issue 3: JWT
// signing, the user store in NATS KV, rate limits). Until then the function
// is declared and routable, and every call answers 501 not_implemented in
// the platform's error shape, so that nobody mistakes it for a working
// login.
package auth

import (
	"net/http"

	"github.com/shoal-dev/shoal/invocation"
)

// Handler answers 501 not_implemented to every request.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		invocation.Errorf(http.StatusNotImplemented, invocation.CodeNotImplemented,
			"the auth function does not issue tokens yet in this version of Shoal").WriteHTTP(w)
	})
}
