package functions_test

import (
	"fmt"
	"net/http/httptest"

	"github.com/shoal-dev/shoal/functions"
)

func ExampleNames() {
	fmt.Println(functions.Names())
	// Output: [auth echo ping]
}

// A built-in function is an http.Handler; a runner calls it with the
// request an invocation carries.
func ExampleBuiltins() {
	ping := functions.Builtins(functions.Deps{})["ping"]
	w := httptest.NewRecorder()
	ping.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	fmt.Println(w.Code, w.Body.String())
	// Output: 200 pong!
}
