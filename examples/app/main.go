// Command app is Permafrost's demo application: a small HTTP server that the tests run on a real
// node. Every answer tells the version that served it, /metrics counts the answers, and
// environment variables make it fail in the ways a rollout has to notice (README.md lists them).
//
// It writes nothing to disk (logs go to stdout), so it runs as any user on a read-only root
// filesystem.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// version is baked in at build time (-ldflags "-X main.version=v1"); APP_VERSION overrides it.
var version = "dev"

// config is the app's behaviour, read once from the environment at start.
type config struct {
	port            string
	version         string
	neverReady      bool
	crashOnStart    bool
	crashAfter      time.Duration // 0: never
	notReadyAfter   time.Duration // 0: never
	errorPPM        int64         // ERROR_RATE in parts per million, so the failing requests are exact
	slow            time.Duration
	shutdownTimeout time.Duration
	failureModes    []string // the failure variables that are set, as NAME=value, for the start-up log
}

// maxSeconds bounds the *_SECONDS variables well below time.Duration's range (about 292 years).
const maxSeconds = 1e9

// envReader parses environment variables, collecting every error so one start-up log line
// names all the bad values at once.
type envReader struct {
	getenv func(string) string
	cfg    *config
	errs   []error
}

// get returns the variable's value; a failure-mode variable that is set is recorded in cfg.
func (r *envReader) get(name string, failureMode bool) string {
	v := r.getenv(name)
	if v != "" && failureMode {
		r.cfg.failureModes = append(r.cfg.failureModes, name+"="+v)
	}
	return v
}

func (r *envReader) fail(name, value, want string) {
	r.errs = append(r.errs, fmt.Errorf("%s=%q: want %s", name, value, want))
}

func (r *envReader) boolean(name string) bool {
	v := r.get(name, true)
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(name, v, "1/true or 0/false")
	}
	return b
}

// seconds reads a number of seconds (decimals allowed); unset or 0 gives def.
func (r *envReader) seconds(name string, def time.Duration, failureMode bool) time.Duration {
	v := r.get(name, failureMode)
	if v == "" {
		return def
	}
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || !(s >= 0 && s <= maxSeconds) { // NB: written so that NaN fails too
		r.fail(name, v, "a number of seconds >= 0")
		return def
	}
	return time.Duration(s * float64(time.Second))
}

func (r *envReader) millis(name string) time.Duration {
	v := r.get(name, true)
	if v == "" {
		return 0
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 || ms > maxSeconds*1000 {
		r.fail(name, v, "a whole number of milliseconds >= 0")
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

func (r *envReader) fraction(name string) float64 {
	v := r.get(name, true)
	if v == "" {
		return 0
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 0 && f <= 1) {
		r.fail(name, v, "a fraction between 0 and 1")
		return 0
	}
	return f
}

// loadConfig reads the configuration; README.md documents each variable.
func loadConfig(getenv func(string) string) (config, error) {
	cfg := config{port: "8080", version: version}
	r := envReader{getenv: getenv, cfg: &cfg}
	if v := r.get("PORT", false); v != "" {
		if p, err := strconv.Atoi(v); err != nil || p < 0 || p > 65535 {
			r.fail("PORT", v, "a TCP port (0 picks a free one)")
		} else {
			cfg.port = v
		}
	}
	if v := r.get("APP_VERSION", false); v != "" {
		cfg.version = v
	}
	cfg.neverReady = r.boolean("NEVER_READY")
	cfg.crashOnStart = r.boolean("CRASH_ON_START")
	cfg.crashAfter = r.seconds("CRASH_AFTER_SECONDS", 0, true)
	cfg.notReadyAfter = r.seconds("NOT_READY_AFTER_SECONDS", 0, true)
	cfg.errorPPM = int64(math.Round(r.fraction("ERROR_RATE") * 1e6))
	cfg.slow = r.millis("SLOW_MS")
	cfg.shutdownTimeout = r.seconds("SHUTDOWN_TIMEOUT_SECONDS", 5*time.Second, false)
	return cfg, errors.Join(r.errs...)
}

// app holds the HTTP handlers and their counters.
type app struct {
	cfg      config
	hostname string
	ready    atomic.Bool

	mu     sync.Mutex
	served int64          // requests answered by / (not 404s): ERROR_RATE picks among them
	codes  map[int]uint64 // answers of the / handler by status code, for /metrics
}

func newApp(cfg config) *app {
	hostname, err := os.Hostname()
	if err != nil {
		hostname = "unknown"
	}
	// NB: 200 and 500 exist from the start at 0, so a scraper's rate() sees the first error.
	a := &app{cfg: cfg, hostname: hostname, codes: map[int]uint64{http.StatusOK: 0, http.StatusInternalServerError: 0}}
	a.ready.Store(!cfg.neverReady)
	return a
}

// handler routes the requests; every answer, including the mux's own, carries X-App-Version.
func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", a.root)
	mux.HandleFunc("/healthz", a.healthz)
	mux.HandleFunc("/metrics", a.metrics)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App-Version", a.cfg.version)
		mux.ServeHTTP(w, r)
	})
}

// answer is the JSON body of /.
type answer struct {
	Version  string `json:"version"`
	Hostname string `json:"hostname"`
	Status   int    `json:"status"`
	Error    string `json:"error,omitempty"`
}

func (a *app) root(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		a.reply(w, http.StatusNotFound, "not found")
		return
	}
	if a.cfg.slow > 0 {
		t := time.NewTimer(a.cfg.slow)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return // the client is gone: nothing answered, nothing counted
		}
	}
	if a.nextFails() {
		a.reply(w, http.StatusInternalServerError, "injected failure (ERROR_RATE)")
		return
	}
	a.reply(w, http.StatusOK, "")
}

// nextFails counts a request to / and tells whether ERROR_RATE fails it: the n-th request fails
// when floor(n*rate) grows, so exactly floor(n*rate) of the first n fail, evenly spread
// (at 0.2: the 5th, 10th, 15th, ...).
func (a *app) nextFails() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.served++
	n := a.served
	return n*a.cfg.errorPPM/1e6 > (n-1)*a.cfg.errorPPM/1e6
}

func (a *app) reply(w http.ResponseWriter, code int, errText string) {
	a.mu.Lock()
	a.codes[code]++
	a.mu.Unlock()
	body, _ := json.Marshal(answer{Version: a.cfg.version, Hostname: a.hostname, Status: code, Error: errText})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

func (a *app) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !a.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintln(w, "not ready")
		return
	}
	_, _ = fmt.Fprintln(w, "ok")
}

// labelEscaper escapes a label value as the Prometheus text format requires.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// metrics writes the counters in the Prometheus text exposition format 0.0.4.
func (a *app) metrics(w http.ResponseWriter, _ *http.Request) {
	v := labelEscaper.Replace(a.cfg.version)
	var b strings.Builder
	b.WriteString("# HELP demo_build_info The version of the demo app; the value is always 1.\n")
	b.WriteString("# TYPE demo_build_info gauge\n")
	fmt.Fprintf(&b, "demo_build_info{version=\"%s\"} 1\n", v)
	b.WriteString("# HELP demo_http_requests_total Requests answered by the demo app, by status code (not /healthz nor /metrics).\n")
	b.WriteString("# TYPE demo_http_requests_total counter\n")
	a.mu.Lock()
	codes := make([]int, 0, len(a.codes))
	for c := range a.codes {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	for _, c := range codes {
		fmt.Fprintf(&b, "demo_http_requests_total{code=\"%d\",version=\"%s\"} %d\n", c, v, a.codes[c])
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write([]byte(b.String()))
}

// run serves on ln until a signal arrives on stop, then shuts down gracefully: it stops
// accepting, lets the requests in flight finish and returns 0, or 1 if they outlast
// SHUTDOWN_TIMEOUT_SECONDS. CRASH_AFTER_SECONDS makes it return 1 at once, dropping everything.
func run(cfg config, ln net.Listener, log *slog.Logger, stop <-chan os.Signal) int {
	a := newApp(cfg)
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	modes := "none"
	if len(cfg.failureModes) > 0 {
		modes = strings.Join(cfg.failureModes, " ")
	}
	log.Info("listening", "addr", ln.Addr().String(), "version", cfg.version, "hostname", a.hostname,
		"ready", a.ready.Load(), "failure_modes", modes)

	if cfg.notReadyAfter > 0 && !cfg.neverReady {
		t := time.AfterFunc(cfg.notReadyAfter, func() {
			a.ready.Store(false)
			log.Warn("not ready any more", "reason", "NOT_READY_AFTER_SECONDS", "after", cfg.notReadyAfter.String())
		})
		defer t.Stop()
	}
	var crash <-chan time.Time
	if cfg.crashAfter > 0 {
		t := time.NewTimer(cfg.crashAfter)
		defer t.Stop()
		crash = t.C
	}

	select {
	case err := <-serveErr:
		log.Error("server failed", "err", err)
		return 1
	case <-crash:
		log.Error("crashing on purpose", "reason", "CRASH_AFTER_SECONDS", "after", cfg.crashAfter.String())
		_ = srv.Close()
		return 1
	case sig := <-stop:
		log.Info("shutting down", "signal", sig.String(), "timeout", cfg.shutdownTimeout.String())
		ctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Error("shutdown timed out, dropping the requests still in flight", "err", err)
			_ = srv.Close()
			return 1
		}
		log.Info("stopped")
		return 0
	}
}

// fetch is the app's client mode, "app get URL": the image has no shell nor curl, so this is what
// `kubectl exec` runs to fetch a URL from inside a pod. It prints the body and exits 0 on a 2xx
// answer, 1 on any other answer or error (with the reason on stderr).
func fetch(url string, out, errOut *os.File) int {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(errOut, "get:", err)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		fmt.Fprintln(errOut, "get: reading the body:", err)
		return 1
	}
	out.Write(body)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintln(errOut, "get:", resp.Status)
		return 1
	}
	return 0
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "get" {
		os.Exit(fetch(os.Args[2], os.Stdout, os.Stderr))
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	cfg, err := loadConfig(os.Getenv)
	if err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(1)
	}
	if cfg.crashOnStart {
		log.Error("crashing on purpose", "reason", "CRASH_ON_START")
		os.Exit(1)
	}
	// NB: before listening, so a SIGTERM during start-up still shuts down gracefully.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	ln, err := net.Listen("tcp", ":"+cfg.port)
	if err != nil {
		log.Error("cannot listen", "err", err)
		os.Exit(1)
	}
	os.Exit(run(cfg, ln, log, stop))
}
