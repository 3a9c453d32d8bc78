//go:build linux

package launcher_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/bundle"
	"github.com/shoal-dev/shoal/platform/launcher"
)

// `shoal deploy` uploads a function's code and the catalog names it by
// digest; a runner's launcher fetches that code, builds the function's
// environment and starts it.
func ExampleLauncher_Start() {
	_, js, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tmp, err := os.MkdirTemp("", "shoal-launcher-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		fmt.Println(err)
		return
	}
	if err := os.WriteFile(filepath.Join(src, "hello.sh"), []byte(`echo "$GREETING from $SHOAL_FUNCTION"`+"\n"), 0o755); err != nil {
		fmt.Println(err)
		return
	}

	// Deploy.
	code, err := bundle.Create(ctx, js, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	b, err := bundle.Pack(src, bundle.PackOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	if _, err := code.Put(ctx, b, "hello"); err != nil {
		fmt.Println(err)
		return
	}
	fn := manifest.Function{
		Name: "hello", Timeout: 5 * time.Second, Concurrency: 1, Public: true,
		Handler: manifest.Handler{Exec: &manifest.ExecHandler{Command: []string{"sh", "hello.sh"}}},
		Process: manifest.Process{
			Code: manifest.CodeRef{Digest: b.Digest.String(), Size: b.Size},
			Env:  map[string]string{"GREETING": "Hello"},
		},
	}

	// Run.
	l, err := launcher.New(launcher.Config{JetStream: js, CacheDir: filepath.Join(tmp, "cache")})
	if err != nil {
		fmt.Println(err)
		return
	}
	h, err := l.Start(ctx, fn)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close(ctx)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", nil))
	fmt.Print(w.Code, " ", w.Body)
	// Output: 200 Hello from hello
}
