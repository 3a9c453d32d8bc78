// Package functions is the registry of the functions built into the shoal
// binary, by the name fn.yaml gives them in `handler: {builtin: NAME}`.
package functions

import (
	"maps"
	"net/http"
	"slices"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/ping"
)

// Builtins returns a new map of the built-in functions by name.
func Builtins() map[string]http.Handler {
	return map[string]http.Handler{
		"ping": ping.Handler(),
		"echo": echo.Handler(),
		"auth": auth.Handler(),
	}
}

// Names returns the built-in functions' names, sorted.
func Names() []string {
	return slices.Sorted(maps.Keys(Builtins()))
}
