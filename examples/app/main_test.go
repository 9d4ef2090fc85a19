package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the tests run main() itself in a child process (see runMain).
func TestMain(m *testing.M) {
	if os.Getenv("DEMO_APP_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// env is a getenv over a map.
func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func mustConfig(t *testing.T, vars map[string]string) config {
	t.Helper()
	cfg, err := loadConfig(env(vars))
	if err != nil {
		t.Fatalf("loadConfig(%v): %v", vars, err)
	}
	return cfg
}

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestConfigDefaults(t *testing.T) {
	cfg := mustConfig(t, nil)
	if cfg.port != "8080" || cfg.version != version || cfg.shutdownTimeout != 5*time.Second {
		t.Errorf("defaults: port %q version %q shutdown timeout %v", cfg.port, cfg.version, cfg.shutdownTimeout)
	}
	if cfg.neverReady || cfg.crashOnStart || cfg.crashAfter != 0 || cfg.notReadyAfter != 0 ||
		cfg.errorPPM != 0 || cfg.slow != 0 || len(cfg.failureModes) != 0 {
		t.Errorf("a failure mode is on by default: %+v", cfg)
	}
}

func TestConfigReadsEveryVariable(t *testing.T) {
	cfg := mustConfig(t, map[string]string{
		"PORT": "9090", "APP_VERSION": "v7", "NEVER_READY": "1", "CRASH_ON_START": "true",
		"CRASH_AFTER_SECONDS": "30", "NOT_READY_AFTER_SECONDS": "1.5", "ERROR_RATE": "0.2",
		"SLOW_MS": "250", "SHUTDOWN_TIMEOUT_SECONDS": "0",
	})
	want := config{
		port: "9090", version: "v7", neverReady: true, crashOnStart: true,
		crashAfter: 30 * time.Second, notReadyAfter: 1500 * time.Millisecond, errorPPM: 200000,
		slow: 250 * time.Millisecond, shutdownTimeout: 0,
	}
	modes := cfg.failureModes
	cfg.failureModes = nil
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v, want %+v", cfg, want)
	}
	if got := strings.Join(modes, " "); got != "NEVER_READY=1 CRASH_ON_START=true CRASH_AFTER_SECONDS=30 NOT_READY_AFTER_SECONDS=1.5 ERROR_RATE=0.2 SLOW_MS=250" {
		t.Errorf("failure modes for the log: %q", got)
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	for name, value := range map[string]string{
		"PORT": "http", "NEVER_READY": "maybe", "CRASH_ON_START": "yes please",
		"CRASH_AFTER_SECONDS": "-1", "NOT_READY_AFTER_SECONDS": "NaN", "ERROR_RATE": "1.5",
		"SLOW_MS": "0.5", "SHUTDOWN_TIMEOUT_SECONDS": "1e300",
	} {
		if _, err := loadConfig(env(map[string]string{name: value})); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%s: error %v, want one naming the variable", name, value, err)
		}
	}
	_, err := loadConfig(env(map[string]string{"PORT": "70000", "ERROR_RATE": "-0.1"}))
	if err == nil || !strings.Contains(err.Error(), "PORT") || !strings.Contains(err.Error(), "ERROR_RATE") {
		t.Errorf("two bad values: %v, want both named", err)
	}
}

func TestRootAnswersWithVersionAndHostname(t *testing.T) {
	a := newApp(mustConfig(t, map[string]string{"APP_VERSION": "v2"}))
	rec := get(t, a.handler(), "/")
	if rec.Code != http.StatusOK || rec.Header().Get("X-App-Version") != "v2" || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %v", rec.Code, rec.Header())
	}
	hostname, _ := os.Hostname()
	want := `{"version":"v2","hostname":"` + hostname + `","status":200}` + "\n"
	if rec.Body.String() != want {
		t.Errorf("body %q, want %q", rec.Body, want)
	}
}

func TestEveryAnswerCarriesTheVersion(t *testing.T) {
	h := newApp(mustConfig(t, nil)).handler()
	for _, path := range []string{"/", "/healthz", "/metrics", "/nowhere"} {
		if got := get(t, h, path).Header().Get("X-App-Version"); got != version {
			t.Errorf("%s: X-App-Version %q, want %q", path, got, version)
		}
	}
	rec := get(t, h, "/nowhere")
	var body answer
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusNotFound || body.Status != http.StatusNotFound {
		t.Errorf("/nowhere: %d %q (%v)", rec.Code, rec.Body, err)
	}
}

func TestErrorRateFailsAnExactEvenlySpreadShare(t *testing.T) {
	for _, tc := range []struct {
		rate    string
		failing []int // the 1-based numbers of the failing requests among the first 10
	}{
		{"0", nil},
		{"0.2", []int{5, 10}},
		{"0.3", []int{4, 7, 10}},
		{"0.5", []int{2, 4, 6, 8, 10}},
		{"1", []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
	} {
		h := newApp(mustConfig(t, map[string]string{"ERROR_RATE": tc.rate})).handler()
		var failing []int
		for n := 1; n <= 10; n++ {
			rec := get(t, h, "/")
			switch rec.Code {
			case http.StatusOK:
			case http.StatusInternalServerError:
				failing = append(failing, n)
				if !strings.Contains(rec.Body.String(), `"status":500`) {
					t.Errorf("ERROR_RATE=%s: 500 with body %q", tc.rate, rec.Body)
				}
			default:
				t.Fatalf("ERROR_RATE=%s: request %d answered %d", tc.rate, n, rec.Code)
			}
		}
		if !slices.Equal(failing, tc.failing) {
			t.Errorf("ERROR_RATE=%s: requests %v failed, want %v", tc.rate, failing, tc.failing)
		}
	}
}

func TestHealthz(t *testing.T) {
	rec := get(t, newApp(mustConfig(t, nil)).handler(), "/healthz")
	if rec.Code != http.StatusOK || rec.Body.String() != "ok\n" {
		t.Errorf("ready: %d %q", rec.Code, rec.Body)
	}
	rec = get(t, newApp(mustConfig(t, map[string]string{"NEVER_READY": "1"})).handler(), "/healthz")
	if rec.Code != http.StatusServiceUnavailable || rec.Body.String() != "not ready\n" {
		t.Errorf("NEVER_READY: %d %q", rec.Code, rec.Body)
	}
}

func TestMetricsExposition(t *testing.T) {
	h := newApp(mustConfig(t, map[string]string{"APP_VERSION": "v1", "ERROR_RATE": "0.25"})).handler()
	for range 4 {
		get(t, h, "/")
	}
	get(t, h, "/healthz") // probes and scrapes are not counted
	get(t, h, "/missing")
	rec := get(t, h, "/metrics")
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("content type %q", ct)
	}
	want := `# HELP demo_build_info The version of the demo app; the value is always 1.
# TYPE demo_build_info gauge
demo_build_info{version="v1"} 1
# HELP demo_http_requests_total Requests answered by the demo app, by status code (not /healthz nor /metrics).
# TYPE demo_http_requests_total counter
demo_http_requests_total{code="200",version="v1"} 3
demo_http_requests_total{code="404",version="v1"} 1
demo_http_requests_total{code="500",version="v1"} 1
`
	if rec.Body.String() != want {
		t.Errorf("metrics:\n%s\nwant:\n%s", rec.Body, want)
	}
}

func TestMetricsEscapeLabelValues(t *testing.T) {
	rec := get(t, newApp(mustConfig(t, map[string]string{"APP_VERSION": "a\"b\\c\nd"})).handler(), "/metrics")
	if !strings.Contains(rec.Body.String(), `demo_build_info{version="a\"b\\c\nd"} 1`+"\n") {
		t.Errorf("label value not escaped:\n%s", rec.Body)
	}
}

func TestSlowDelaysOnlyTheRoot(t *testing.T) {
	h := newApp(mustConfig(t, map[string]string{"SLOW_MS": "100"})).handler()
	start := time.Now()
	get(t, h, "/healthz")
	if d := time.Since(start); d >= 100*time.Millisecond {
		t.Errorf("/healthz took %v", d)
	}
	start = time.Now()
	if rec := get(t, h, "/"); rec.Code != http.StatusOK {
		t.Errorf("/: %d", rec.Code)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("/ took %v, want >= 100ms", d)
	}
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// started runs run() on a loopback port; it returns the base URL, the stop channel, the exit
// code channel and the log.
func started(t *testing.T, vars map[string]string) (string, chan os.Signal, chan int, *syncBuffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	stop := make(chan os.Signal, 1)
	code := make(chan int, 1)
	go func() { code <- run(mustConfig(t, vars), ln, slog.New(slog.NewTextHandler(logs, nil)), stop) }()
	return "http://" + ln.Addr().String(), stop, code, logs
}

func exitCode(t *testing.T, code chan int, within time.Duration) int {
	t.Helper()
	select {
	case c := <-code:
		return c
	case <-time.After(within):
		t.Fatalf("run did not return within %v", within)
		return -1
	}
}

func TestShutdownFinishesRequestsInFlight(t *testing.T) {
	url, stop, code, logs := started(t, map[string]string{"SLOW_MS": "500"})
	type result struct {
		status int
		err    error
	}
	inFlight := make(chan result, 1)
	go func() {
		resp, err := http.Get(url + "/")
		if err != nil {
			inFlight <- result{err: err}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		inFlight <- result{status: resp.StatusCode}
	}()
	time.Sleep(150 * time.Millisecond) // the request is now waiting out SLOW_MS
	stop <- syscall.SIGTERM
	if c := exitCode(t, code, 3*time.Second); c != 0 {
		t.Errorf("exit code %d, want 0; log:\n%s", c, logs)
	}
	if r := <-inFlight; r.err != nil || r.status != http.StatusOK {
		t.Errorf("request in flight during shutdown: %d %v", r.status, r.err)
	}
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Error("still accepting after shutdown")
	}
	for _, line := range []string{"msg=listening", `msg="shutting down" signal=terminated`, "msg=stopped"} {
		if !strings.Contains(logs.String(), line) {
			t.Errorf("log lacks %q:\n%s", line, logs)
		}
	}
}

func TestShutdownTimeoutDropsSlowRequests(t *testing.T) {
	url, stop, code, logs := started(t, map[string]string{"SLOW_MS": "3000", "SHUTDOWN_TIMEOUT_SECONDS": "0.2"})
	go func() {
		if resp, err := http.Get(url + "/"); err == nil {
			_ = resp.Body.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	stop <- syscall.SIGTERM
	if c := exitCode(t, code, 2*time.Second); c != 1 {
		t.Errorf("exit code %d, want 1; log:\n%s", c, logs)
	}
}

func TestCrashAfterSeconds(t *testing.T) {
	_, _, code, logs := started(t, map[string]string{"CRASH_AFTER_SECONDS": "0.1"})
	if c := exitCode(t, code, 2*time.Second); c != 1 {
		t.Errorf("exit code %d, want 1", c)
	}
	if !strings.Contains(logs.String(), `msg="crashing on purpose" reason=CRASH_AFTER_SECONDS`) {
		t.Errorf("log:\n%s", logs)
	}
}

func TestNotReadyAfterSeconds(t *testing.T) {
	url, stop, code, logs := started(t, map[string]string{"NOT_READY_AFTER_SECONDS": "0.3"})
	status := func() int {
		resp, err := http.Get(url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if s := status(); s != http.StatusOK {
		t.Errorf("at start: %d, want 200", s)
	}
	deadline := time.Now().Add(2 * time.Second)
	for status() != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/healthz still answers 200 after NOT_READY_AFTER_SECONDS")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `msg="not ready any more"`) {
		t.Errorf("log:\n%s", logs)
	}
	stop <- syscall.SIGTERM
	exitCode(t, code, 2*time.Second)
}

// runMain runs main() in a child process (the test binary itself) with the given environment.
func runMain(t *testing.T, vars ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"DEMO_APP_RUN_MAIN=1"}, vars...)...)
	return cmd
}

func exitStatus(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestMainCrashOnStart(t *testing.T) {
	out, err := runMain(t, "CRASH_ON_START=1", "PORT=0").CombinedOutput()
	if exitStatus(err) != 1 || !strings.Contains(string(out), `msg="crashing on purpose" reason=CRASH_ON_START`) {
		t.Errorf("exit %v, output:\n%s", err, out)
	}
}

func TestMainRejectsBadConfiguration(t *testing.T) {
	out, err := runMain(t, "ERROR_RATE=lots", "PORT=0").CombinedOutput()
	if exitStatus(err) != 1 || !strings.Contains(string(out), `msg="invalid configuration"`) || !strings.Contains(string(out), "ERROR_RATE") {
		t.Errorf("exit %v, output:\n%s", err, out)
	}
}

func TestMainExitsZeroOnSIGTERM(t *testing.T) {
	cmd := runMain(t, "PORT=0")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := regexp.MustCompile(`msg=listening addr=\S+:(\d+) `)
	deadline := time.Now().Add(5 * time.Second)
	for !listening.MatchString(out.String()) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("never listening:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	port := listening.FindStringSubmatch(out.String())[1]
	resp, err := http.Get("http://127.0.0.1:" + port + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %v %v", resp, err)
	} else {
		_ = resp.Body.Close()
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "msg=stopped") {
		t.Errorf("output:\n%s", out)
	}
}

func TestFetchPrintsTheBodyAndExitsByStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			http.Error(w, "nope", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "hello")
	}))
	defer srv.Close()
	for _, tc := range []struct {
		path, body string
		code       int
	}{{"/", "hello", 0}, {"/bad", "nope\n", 1}} {
		out, err := os.CreateTemp(t.TempDir(), "out")
		if err != nil {
			t.Fatal(err)
		}
		if code := fetch(srv.URL+tc.path, out, os.Stderr); code != tc.code {
			t.Errorf("%s: exit %d, want %d", tc.path, code, tc.code)
		}
		got, _ := os.ReadFile(out.Name())
		if string(got) != tc.body {
			t.Errorf("%s: body %q, want %q", tc.path, got, tc.body)
		}
	}
	if code := fetch("http://127.0.0.1:1/", os.Stdout, os.Stderr); code != 1 {
		t.Errorf("unreachable: exit %d, want 1", code)
	}
}
