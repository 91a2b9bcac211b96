package main

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"glimpse/internal/qemutest"
)

// storeProc is a `glimpse serve` store running as a subprocess.
type storeProc struct {
	cmd  *exec.Cmd
	url  string
	done chan error
	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *storeProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// storeBinary builds glimpse into dir.
func storeBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "glimpse")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startStore runs `glimpse serve` (store mode) and waits for its "serving" log line.
func startStore(t *testing.T, bin, dataDir string, args ...string) *storeProc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &storeProc{cmd: cmd, done: make(chan error, 1)}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.Write(append(sc.Bytes(), '\n'))
			p.mu.Unlock()
			var line struct{ Msg, URL string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "glimpse store serving the Image API v2" {
				urls <- line.URL
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	select {
	case p.url = <-urls:
	case err := <-p.done:
		p.done <- err
		t.Fatalf("glimpse exited: %v\n%s", err, p.log())
	}
	return p
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *storeProc) kill9(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

// storeReq is one API request against a store running with --auth none.
func storeReq(t *testing.T, method, url string, body io.Reader, ct string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

type storeImage struct {
	ID, Status, Checksum string
	Size                 *int64
}

func storeCreate(t *testing.T, base, name string) string {
	t.Helper()
	code, b := storeReq(t, "POST", base+"/v2/images", strings.NewReader(`{"name":"`+name+`","disk_format":"raw","container_format":"bare"}`), "application/json")
	if code != 201 {
		t.Fatalf("create: %d %s", code, b)
	}
	var img storeImage
	json.Unmarshal(b, &img)
	return img.ID
}

func storeShow(t *testing.T, base, id string) (int, storeImage) {
	t.Helper()
	code, b := storeReq(t, "GET", base+"/v2/images/"+id, nil, "")
	var img storeImage
	json.Unmarshal(b, &img)
	return code, img
}

func storeRandom(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// checkStoreDir asserts that the data directory holds a data file for each active image and
// nothing else: no temporary files, no orphans.
func checkStoreDir(t *testing.T, dir string, active map[string]bool) {
	t.Helper()
	tmps, _ := os.ReadDir(filepath.Join(dir, "images", ".tmp"))
	if len(tmps) != 0 {
		t.Errorf("%d temporary files left after restart", len(tmps))
	}
	files, err := os.ReadDir(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if f.Name() == ".tmp" {
			continue
		}
		n++
		if !active[f.Name()] {
			t.Errorf("data file %s belongs to no active image", f.Name())
		}
	}
	if n != len(active) {
		t.Errorf("%d data files for %d active images", n, len(active))
	}
}

// TestStoreKilledDuringUpload: kill -9 while an upload streams in, restart: the image is
// queued again, its partial data is gone, and an image uploaded before is intact.
func TestStoreKilledDuringUpload(t *testing.T) {
	bin := storeBinary(t)
	dir := t.TempDir()
	p := startStore(t, bin, dir)
	done := storeCreate(t, p.url, "done")
	data := storeRandom(3 << 20)
	if code, b := storeReq(t, "PUT", p.url+"/v2/images/"+done+"/file", bytes.NewReader(data), "application/octet-stream"); code != 204 {
		t.Fatalf("upload: %d %s", code, b)
	}
	cut := storeCreate(t, p.url, "cut")
	pr, pw := io.Pipe()
	go func() {
		req, _ := http.NewRequest("PUT", p.url+"/v2/images/"+cut+"/file", pr)
		req.Header.Set("Content-Type", "application/octet-stream")
		if res, err := http.DefaultClient.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	if _, err := pw.Write(storeRandom(8 << 20)); err != nil {
		t.Fatal(err)
	}
	// The upload is saving and its temporary file is on disk: kill now.
	if code, img := storeShow(t, p.url, cut); code != 200 || img.Status != "saving" {
		t.Fatalf("mid-upload: %d %s", code, img.Status)
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, "images", ".tmp")); len(tmps) != 1 {
		t.Fatalf("%d temporary files mid-upload", len(tmps))
	}
	p.kill9(t)
	pw.CloseWithError(io.ErrClosedPipe)

	p = startStore(t, bin, dir)
	if code, img := storeShow(t, p.url, cut); code != 200 || img.Status != "queued" || img.Size != nil {
		t.Fatalf("after restart: %d %+v", code, img)
	}
	if !strings.Contains(p.log(), "queued again") || !strings.Contains(p.log(), "unfinished upload") {
		t.Errorf("recovery not logged:\n%s", p.log())
	}
	code, body := storeReq(t, "GET", p.url+"/v2/images/"+done+"/file", nil, "")
	if code != 200 || !bytes.Equal(body, data) {
		t.Fatalf("acknowledged image after restart: %d, %d bytes", code, len(body))
	}
	checkStoreDir(t, dir, map[string]bool{done: true})
	// The cut image takes a new upload.
	if code, b := storeReq(t, "PUT", p.url+"/v2/images/"+cut+"/file", bytes.NewReader(data[:1000]), "application/octet-stream"); code != 204 {
		t.Fatalf("upload after restart: %d %s", code, b)
	}
}

// TestStoreKilledDuringDeletes: kill -9 while deletes and uploads are in flight, restart:
// every acknowledged delete is gone with its data, every acknowledged upload is active
// with its data intact, and every other image is whole (active with its data, or queued
// with none).
func TestStoreKilledDuringDeletes(t *testing.T) {
	bin := storeBinary(t)
	dir := t.TempDir()
	p := startStore(t, bin, dir)
	const n = 12
	data := map[string][]byte{}
	var ids, fresh []string
	for i := 0; i < n; i++ {
		id := storeCreate(t, p.url, fmt.Sprint("img", i))
		data[id] = storeRandom(256<<10 + i)
		if code, b := storeReq(t, "PUT", p.url+"/v2/images/"+id+"/file", bytes.NewReader(data[id]), "application/octet-stream"); code != 204 {
			t.Fatalf("upload: %d %s", code, b)
		}
		ids = append(ids, id)
		f := storeCreate(t, p.url, fmt.Sprint("fresh", i))
		data[f] = storeRandom(1<<20 + i)
		fresh = append(fresh, f)
	}
	var mu sync.Mutex
	deleted, uploaded := map[string]bool{}, map[string]bool{}
	acks := make(chan struct{}, 2*n)
	var wg sync.WaitGroup
	send := func(method, id string, body []byte, want int, record map[string]bool) {
		defer wg.Done()
		req, _ := http.NewRequest(method, p.url+"/v2/images/"+id+func() string {
			if body != nil {
				return "/file"
			}
			return ""
		}(), bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/octet-stream")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return // killed
		}
		res.Body.Close()
		if res.StatusCode == want {
			mu.Lock()
			record[id] = true
			mu.Unlock()
			acks <- struct{}{}
		}
	}
	for i := 0; i < n; i++ {
		wg.Add(2)
		go send("DELETE", ids[i], nil, 204, deleted)
		go send("PUT", fresh[i], data[fresh[i]], 204, uploaded)
	}
	// Kill once some requests are acknowledged and others are still in flight.
	for i := 0; i < 3; i++ {
		<-acks
	}
	p.kill9(t)
	wg.Wait()
	t.Logf("acknowledged before the kill: %d deletes, %d uploads", len(deleted), len(uploaded))

	p = startStore(t, bin, dir)
	active := map[string]bool{}
	for _, id := range append(append([]string{}, ids...), fresh...) {
		code, img := storeShow(t, p.url, id)
		switch {
		case deleted[id]:
			if code != 404 {
				t.Errorf("acknowledged delete of %s undone: %d %s", id, code, img.Status)
			}
			continue
		case code == 404:
			continue // deleted, the answer lost to the kill
		case uploaded[id] && img.Status != "active":
			t.Errorf("acknowledged upload of %s lost: %s", id, img.Status)
		}
		switch img.Status {
		case "active":
			active[id] = true
			sum := md5.Sum(data[id])
			code, body := storeReq(t, "GET", p.url+"/v2/images/"+id+"/file", nil, "")
			if code != 200 || !bytes.Equal(body, data[id]) || img.Checksum != hex.EncodeToString(sum[:]) {
				t.Errorf("image %s: %d, %d bytes, checksum %s", id, code, len(body), img.Checksum)
			}
		case "queued":
			if img.Size != nil {
				t.Errorf("queued image %s has a size", id)
			}
		default:
			t.Errorf("image %s is %s after restart", id, img.Status)
		}
	}
	checkStoreDir(t, dir, active)
}

// TestStoreGracefulStop: SIGTERM stops the server cleanly.
func TestStoreGracefulStop(t *testing.T) {
	p := startStore(t, storeBinary(t), t.TempDir())
	if code, b := storeReq(t, "GET", p.url+"/healthcheck", nil, ""); code != 200 || string(b) != "OK" {
		t.Fatalf("healthcheck: %d %s", code, b)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil || !strings.Contains(p.log(), `"msg":"stopped"`) {
			t.Fatalf("exit: %v\n%s", err, p.log())
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("no exit two minutes after SIGTERM")
	}
}

func TestStoreFlagErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--auth", "kerberos"}, `--auth "kerberos": must be none, headers or tokens`},
		{[]string{"--auth", "tokens"}, "--auth tokens needs --token-file"},
		{[]string{"--auth", "tokens", "--token-file", filepath.Join(dir, "missing")}, "--token-file"},
		{[]string{"--max-image-size", "lots"}, `--max-image-size "lots"`},
		{[]string{"--allow-format", "qcow3"}, "--allow-format"},
		{[]string{"--log-level", "loud"}, "--log-level"},
	} {
		code, _, stderr := runCLI(t, append([]string{"serve", "--data-dir", dir, "--listen", "127.0.0.1:0"}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q", tc.args, code, stderr)
		}
	}
}

// glanceCLI runs python-glanceclient's `glance` against url with a fresh HOME (its schema
// cache breaks the next call otherwise) and returns its standard output.
func glanceCLI(t *testing.T, url string, args ...string) string {
	t.Helper()
	cmd := exec.Command("/usr/bin/glance", append([]string{"--os-image-url", url, "--os-auth-token", "x", "--os-image-api-version", "2"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "OS_AUTH_URL=", "OS_CLOUD=")
	cmd.Stdin = nil
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("glance %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// TestStoreGlanceCLI: python-glanceclient's `glance`, unchanged, runs a whole workflow.
func TestStoreGlanceCLI(t *testing.T) {
	if _, err := os.Stat("/usr/bin/glance"); err != nil {
		msg := "the glance CLI (python3-glanceclient) is not installed (../shared/glance/glance-server installs it)"
		if qemutest.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	p := startStore(t, storeBinary(t), t.TempDir())
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.raw")
	data := storeRandom(1<<20 + 512)
	os.WriteFile(file, data, 0o644)
	sum := md5.Sum(data)

	out := glanceCLI(t, p.url, "image-create", "--name", "cli-image", "--disk-format", "raw", "--container-format", "bare",
		"--property", "os_distro=cirros", "--property", "tier=gold", "--file", file)
	var id string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "|")
		if len(f) > 2 && strings.TrimSpace(f[1]) == "id" {
			id = strings.TrimSpace(f[2])
		}
	}
	if id == "" || !strings.Contains(out, hex.EncodeToString(sum[:])) || !strings.Contains(out, "active") {
		t.Fatalf("image-create:\n%s", out)
	}
	small := filepath.Join(dir, "small.raw")
	os.WriteFile(small, storeRandom(4096), 0o644)
	for i := 0; i < 3; i++ {
		// With no --file, glance uploads its standard input when that is not a terminal.
		glanceCLI(t, p.url, "image-create", "--name", fmt.Sprint("other", i), "--disk-format", "raw", "--container-format", "bare",
			"--property", "os_distro=debian", "--file", small)
	}
	out = glanceCLI(t, p.url, "image-list", "--property-filter", "disk_format=raw", "--page-size", "1", "--sort-key", "name", "--sort-dir", "asc")
	if strings.Count(out, "cli-image")+strings.Count(out, "other") != 4 {
		t.Fatalf("image-list with paging:\n%s", out)
	}
	out = glanceCLI(t, p.url, "image-list", "--property-filter", "tier=gold")
	if !strings.Contains(out, "cli-image") || strings.Contains(out, "other") {
		t.Fatalf("image-list --property-filter tier=gold:\n%s", out)
	}
	out = glanceCLI(t, p.url, "image-update", "--name", "cli-renamed", "--property", "hw_disk_bus=virtio", id)
	if !strings.Contains(out, "cli-renamed") || !strings.Contains(out, "virtio") {
		t.Fatalf("image-update:\n%s", out)
	}
	glanceCLI(t, p.url, "image-tag-update", id, "golden")
	out = glanceCLI(t, p.url, "image-show", id)
	if !strings.Contains(out, "golden") || !strings.Contains(out, "sha512") {
		t.Fatalf("image-show:\n%s", out)
	}
	glanceCLI(t, p.url, "member-create", id, "tenant-b")
	glanceCLI(t, p.url, "member-update", id, "tenant-b", "accepted")
	out = glanceCLI(t, p.url, "member-list", "--image-id", id)
	if !strings.Contains(out, "tenant-b") || !strings.Contains(out, "accepted") {
		t.Fatalf("member-list:\n%s", out)
	}
	got := filepath.Join(dir, "got.raw")
	glanceCLI(t, p.url, "image-download", "--file", got, id)
	if b, _ := os.ReadFile(got); !bytes.Equal(b, data) {
		t.Fatalf("image-download: %d bytes, want %d", len(b), len(data))
	}
	glanceCLI(t, p.url, "image-deactivate", id)
	if out = glanceCLI(t, p.url, "image-show", id); !strings.Contains(out, "deactivated") {
		t.Fatalf("after image-deactivate:\n%s", out)
	}
	glanceCLI(t, p.url, "image-reactivate", id)
	glanceCLI(t, p.url, "image-tag-delete", id, "golden")
	glanceCLI(t, p.url, "image-delete", id)
	if code, _ := storeShow(t, p.url, id); code != 404 {
		t.Fatalf("after image-delete: %d", code)
	}
}
