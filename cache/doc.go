// Package cache keeps image bytes on a local disk in front of an upstream image service.
//
// An entry is the data of one image, keyed by the image's id and checksum; its files under
// the cache directory are named by a SHA-256 of that key, never by anything a caller chose.
// The in-memory index is an LRU (hashicorp/golang-lru/v2) bounded by bytes: a new entry
// makes room by evicting the least recently used ones, and an image larger than the whole
// cache is streamed through without being kept.
//
// A fill downloads an image once, however many readers ask for it at the same time: the
// first reader starts it, the others follow it (a coalesced wait), and every one of them
// reads the bytes from the temporary file as they land, so that the time to the first byte
// is the upstream's. The fill runs on its own context, detached from the reader that
// started it. It is committed only when the size, the MD5 checksum and the os_hash_value
// (under os_hash_algo) match the image's metadata: temporary file, fsync, rename, sidecar,
// then the index. Until then every reader holds back the last byte of the image, so that a
// mismatch, a short body or an upstream error reaches them as a broken transfer and never
// as the clean end of a wrong body. A failing cache disk never fails a download that the
// upstream can serve: readers go on from the upstream at their own offset and nothing is
// kept.
//
// Each entry has a sidecar (id, size, digests, last access, hits) beside its data. Open
// rebuilds the index from the directory, removing temporary files, data without a sidecar,
// sidecars without data, and entries whose sidecar does not match the data's name or size.
// Because data reaches its final name only after it was verified and fsynced, a process
// killed at any moment leaves either a verified entry or nothing.
//
// This is the equivalent of golang.org/x/sync/singleflight that a streaming cache needs:
// singleflight hands its waiters the result at the end, while followers here read a fill in
// progress. As in singleflight, a failed fill reaches only the readers it had; the next
// request starts a new one.
package cache
