// Package functions is the registry of the functions built into the shoal
// binary, by the name fn.yaml gives them in `handler: {builtin: NAME}`.
package functions

import (
	"net/http"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/ping"
)

// Deps are what some built-ins need from the platform around them.
type Deps struct {
	// Auth configures the auth function. A runner without a signing key
	// (Auth.Signer nil) does not serve it, so that login requests go
	// only to runners that can issue tokens.
	Auth auth.Config
}

// names are the built-ins, sorted.
var names = []string{"auth", "echo", "ping"}

// Builtins returns a new map of the built-in functions by name; those
// whose dependencies are missing from deps are left out.
func Builtins(deps Deps) map[string]http.Handler {
	b := map[string]http.Handler{
		"ping": ping.Handler(),
		"echo": echo.Handler(),
	}
	if deps.Auth.Signer != nil && deps.Auth.Users != nil && deps.Auth.Limiter != nil {
		b["auth"] = auth.Handler(deps.Auth)
	}
	return b
}

// Names returns every built-in function's name, sorted, whether or not a
// given runner can serve it.
func Names() []string { return append([]string(nil), names...) }
