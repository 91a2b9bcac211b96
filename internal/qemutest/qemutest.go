// Package qemutest runs the reference tools (qemu-img, qemu-io, genisoimage, tar) from tests
// and finds the shared third-party samples. Tests that need a tool skip with a clear message
// on a developer's machine that lacks it, and fail under CI=true: CI must never pass by
// skipping.
package qemutest

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Need makes sure the named programs are on PATH: it skips the test when one is missing on
// a developer's machine, and fails it under CI=true.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not found on PATH (install qemu-utils, genisoimage, xorriso: `make test` does it)", tool)
			if InCI() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// Run runs a command and returns its standard output; a failure fails the test with the
// command's standard error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	Need(t, name)
	out, err := Output(name, args...)
	// qemu-img creating a LUKS header times PBKDF2 by the thread's CPU time and gives up when
	// that did not move ("Unable to get accurate CPU usage"), which happens now and then
	// where CPU time is accounted in scheduler ticks (the CI VM): try again a few times.
	for try := 0; try < 5 && err != nil && strings.Contains(err.Error(), "Unable to get accurate CPU usage"); try++ {
		out, err = Output(name, args...)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// Output runs a command and returns its standard output, or an error that carries its
// standard error.
func Output(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Img runs qemu-img.
func Img(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, "qemu-img", args...)
}

// IO runs qemu-io on an image with the given commands ("write -P 0xaa 0 64k", …).
func IO(t testing.TB, path, format string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	Run(t, "qemu-io", args...)
}

// Create makes an image with qemu-img create in dir and returns its path.
func Create(t testing.TB, dir, name, format, size string, opts ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	args := []string{"create", "-q", "-f", format}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	args = append(args, p, size)
	Img(t, args...)
	return p
}

// ImgInfo is the part of `qemu-img info --output=json` that tests compare.
type ImgInfo struct {
	Filename        string          `json:"filename"`
	Format          string          `json:"format"`
	VirtualSize     int64           `json:"virtual-size"`
	ActualSize      int64           `json:"actual-size"`
	ClusterSize     int64           `json:"cluster-size"`
	BackingFilename string          `json:"backing-filename"`
	BackingFormat   string          `json:"backing-filename-format"`
	DirtyFlag       bool            `json:"dirty-flag"`
	Encrypted       bool            `json:"encrypted"`
	FormatSpecific  json.RawMessage `json:"format-specific"`
}

// Info runs `qemu-img info --output=json` (with -f when format is not empty).
func Info(t testing.TB, path, format string) ImgInfo {
	t.Helper()
	args := []string{"info", "--output=json", "-U"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out := Img(t, append(args, path)...)
	var i ImgInfo
	if err := json.Unmarshal([]byte(out), &i); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", path, err, out)
	}
	return i
}

// ConvertSHA256 converts an image to raw with qemu-img and returns the SHA-256 of the result
// and its size.
func ConvertSHA256(t testing.TB, path, format string) (string, int64) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu.raw")
	args := []string{"convert", "-U", "-O", "raw"}
	if format != "" {
		args = append(args, "-f", format)
	}
	Img(t, append(args, path, out)...)
	return FileSHA256(t, out)
}

// FileSHA256 returns the SHA-256 and size of a file.
func FileSHA256(t testing.TB, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

// SharedDir returns the project's ../shared directory (or $GLIMPSE_SHARED). It exists on
// the developers' machines and in CI, not in a user's clone: there the test skips, and under
// CI=true it fails.
func SharedDir(t testing.TB) string {
	t.Helper()
	if d := sharedDir(); d != "" {
		return d
	}
	msg := "../shared (the third-party samples) is not beside this checkout; set GLIMPSE_SHARED to use them"
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func sharedDir() string {
	if d := os.Getenv("GLIMPSE_SHARED"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		return ""
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			s := filepath.Join(filepath.Dir(d), "shared")
			if st, err := os.Stat(filepath.Join(s, "testdata", "third-party")); err == nil && st.IsDir() {
				return s
			}
			return ""
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

var thirdPartyMu sync.Mutex

// ThirdParty returns the path of a third-party sample (relative to
// shared/testdata/third-party), decompressed when it ends in .bz2 or .gz. Decompressed copies
// are kept under the system temp directory and reused, so that each is expanded once per
// machine. The sample is never copied into the repository.
func ThirdParty(t testing.TB, rel string) string {
	t.Helper()
	src := filepath.Join(SharedDir(t), "testdata", "third-party", rel)
	var dec func(io.Reader) (io.Reader, error)
	base := rel
	switch {
	case strings.HasSuffix(rel, ".bz2"):
		dec = func(r io.Reader) (io.Reader, error) { return bzip2.NewReader(r), nil }
		base = strings.TrimSuffix(rel, ".bz2")
	case strings.HasSuffix(rel, ".gz"):
		dec = func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }
		base = strings.TrimSuffix(rel, ".gz")
	default:
		if _, err := os.Stat(src); err != nil {
			t.Fatal(err)
		}
		return src
	}
	cache := filepath.Join(os.TempDir(), fmt.Sprintf("glimpse-third-party-%d", os.Getuid()))
	dst := filepath.Join(cache, base)
	thirdPartyMu.Lock()
	defer thirdPartyMu.Unlock()
	if _, err := os.Stat(dst); err == nil {
		return dst
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	r, err := dec(in)
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".part-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		t.Fatalf("decompressing %s: %v", rel, err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// CopyTo copies a file into dir under name (for samples that must sit beside other files,
// such as a backing chain) and returns the new path.
func CopyTo(t testing.TB, src, dir, name string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := filepath.Join(dir, name)
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// SharedDirOrEmpty returns ../shared, or "" when it is not there (for optional uses such as
// fuzz seeds; tests that depend on the samples call SharedDir).
func SharedDirOrEmpty() string { return sharedDir() }
