//go:build !race

package inspect

// vmdkRace is true under the race detector, where sync.Pool drops items on purpose and
// allocation counts mean nothing.
const vmdkRace = false
