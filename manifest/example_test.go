package manifest_test

import (
	"fmt"

	"github.com/shoal-dev/shoal/manifest"
)

func ExampleParse() {
	src := `version: 1
functions:
  ping:
    description: Answers pong!
    handler: {builtin: ping}
    public: true
    timeout: 5s
`
	m, err := manifest.Parse("fn.yaml", []byte(src), manifest.Options{Builtins: []string{"ping"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, fn := range m.Functions {
		fmt.Println(fn.Name, fn.Handler, fn.Timeout, fn.Concurrency, fn.Public)
	}
	// Output: ping builtin:ping 5s 100 true
}

func ExampleErrors() {
	src := `version: 1
functions:
  ping:
    handler: {builtin: pong}
    timeout: 5
`
	_, err := manifest.Parse("fn.yaml", []byte(src), manifest.Options{Builtins: []string{"ping"}})
	fmt.Println(err)
	// Output:
	// fn.yaml:4:24: functions.ping.handler.builtin: unknown built-in function "pong"; this build has: ping
	// fn.yaml:5:14: functions.ping.timeout: expected a duration with a unit, like 5s or 1m30s; got the bare number 5
}
