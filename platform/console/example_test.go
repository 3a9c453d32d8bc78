package console_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/shoal-dev/shoal/platform/console"
)

// The gateway mounts the console at /ui/; a browser revalidates each file
// with its ETag and gets 304 while the binary is the same.
func ExampleHandler() {
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, console.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/ui/")
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("Content-Type"))

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	again, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	again.Body.Close()
	fmt.Println(again.StatusCode)
	// Output:
	// 200 text/html; charset=utf-8
	// 304
}
