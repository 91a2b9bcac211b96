package cache

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
)

// Meta is what an image's metadata says about its bytes (Glance's id, size, checksum,
// os_hash_algo and os_hash_value). A fill is committed only when the bytes match all of it.
type Meta struct {
	ID        string `json:"id"`
	Size      int64  `json:"size"`
	Checksum  string `json:"checksum"`      // hex MD5
	HashAlgo  string `json:"os_hash_algo"`  // sha512, as Glance sets it; sha256, sha384, sha1 and md5 too
	HashValue string `json:"os_hash_value"` // hex
}

// Fetcher opens the image's bytes at the upstream: n bytes from offset off, or everything
// from off when n < 0. The body it returns must hold exactly those bytes; an error status
// is an error.
type Fetcher func(ctx context.Context, off, n int64) (io.ReadCloser, error)

// ErrUncacheable is wrapped by Meta.Validate's errors: metadata that cannot prove bytes.
var ErrUncacheable = errors.New("image metadata cannot verify a cache entry")

// Validate reports whether m can verify a cache entry: an id, a size, a 32-digit hex MD5 and
// a hash of a known algorithm.
func (m Meta) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("image %q: %s: %w", m.ID, fmt.Sprintf(format, a...), ErrUncacheable)
	}
	if m.ID == "" || len(m.ID) > 255 {
		return bad("id empty or longer than 255 bytes")
	}
	if m.Size < 0 {
		return bad("size %d", m.Size)
	}
	if !isHex(m.Checksum, md5.Size) {
		return bad("checksum %q is not a hex MD5", m.Checksum)
	}
	h := newHash(m.HashAlgo)
	if h == nil {
		return bad("os_hash_algo %q is not one glimpse knows", m.HashAlgo)
	}
	if !isHex(m.HashValue, h.Size()) {
		return bad("os_hash_value %q is not a hex %s", m.HashValue, m.HashAlgo)
	}
	return nil
}

// key names the entry: a SHA-256 of the image's id and checksum, so that file names never
// carry a caller's bytes.
func (m Meta) key() string {
	sum := sha256.Sum256([]byte(m.ID + "\x00" + strings.ToLower(m.Checksum)))
	return hex.EncodeToString(sum[:])
}

func isHex(s string, n int) bool {
	if len(s) != 2*n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func newHash(algo string) hash.Hash {
	switch strings.ToLower(algo) {
	case "sha512":
		return sha512.New()
	case "sha384":
		return sha512.New384()
	case "sha256":
		return sha256.New()
	case "sha1":
		return sha1.New()
	case "md5":
		return md5.New()
	}
	return nil
}
