// The ROUGE-L index's kernel: posting scan, bounds, bit-parallel LCS and rouge-score's F formula.
//
// actors/method/dedup_index.py owns the tokenizer and the vocabulary (token ids in order of first
// sight) and calls this module with token-id lists; the rules it applies are described there.
// Members are numbered in acceptance order. A batch is scored against the pool as it stood at
// the batch's start, one candidate per thread at a time (the GIL released); then, in order,
// each candidate is scored against the batch's earlier kept ones, decided, and added.
//
// F is computed as rouge-score computes it, 2*P*R/(P+R) with P = LCS/len(candidate) and
// R = LCS/len(member), in the same float order (built with -ffp-contract=off): the 0.7 boundary
// is a floating-point matter.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace {

constexpr int kCommon = 64;     // the most frequent tokens, summarised as one bit each
constexpr uint8_t kSat = 0xFF;  // an entry's small counts saturate here ("unknown")
constexpr int kNever = 1 << 30;  // an overlap no pair reaches

// A token list's summary for the overlap bound: how many of its occurrences are of rare
// (not common) tokens, which common tokens it holds, and how many common occurrences repeat.
struct Summary {
  int rare = 0;
  int repeats = 0;
  uint64_t common = 0;
};

struct Entry {       // a member holding a token occurrence in its indexed prefix
  uint32_t member;
  uint8_t len;       // the member's length, kSat when it does not fit (read the offsets)
  uint8_t pos;       // the occurrence's position in the member's ordered elements (capped,
                     // which only loosens the bound)
  uint8_t rare;      // the member's Summary, each count kSat when it does not fit
  uint8_t repeats;
  uint64_t common;
};

// The members holding one token occurrence in their prefix. Entries are kept sorted by
// length, then position, so a candidate reads only the lengths that can pass and, of each,
// only the positions that leave enough; new entries go to an unsorted tail (read in full),
// merged in when it grows to a ninth of the posting.
struct Posting {
  std::vector<Entry> entries;
  size_t sorted = 0;

  static bool before(const Entry& x, const Entry& y) {
    return x.len != y.len ? x.len < y.len : x.pos < y.pos;
  }

  void append(const Entry& e) {
    entries.push_back(e);
    const size_t tail = entries.size() - sorted;
    if (tail > 16 && tail * 8 > sorted) sort_tail();
  }

  void sort_tail() {
    std::sort(entries.begin() + sorted, entries.end(), before);
    std::inplace_merge(entries.begin(), entries.begin() + sorted, entries.end(), before);
    sorted = entries.size();
  }
};

// The end of the run of entries of p's length in [p, to): a galloping search, reading
// O(log run) entries.
const Entry* run_end(const Entry* p, const Entry* to) {
  const uint8_t len = p->len;
  const Entry* lo = p;
  size_t step = 1;
  while (static_cast<size_t>(to - lo) > step && lo[step].len == len) {
    lo += step;
    step *= 2;
  }
  const Entry* hi = static_cast<size_t>(to - lo) > step ? lo + step : to;
  return std::upper_bound(lo, hi, len, [](uint8_t l, const Entry& q) { return l < q.len; });
}

struct Elem {        // a token occurrence: the k-th occurrence of tok, ordered by (key, k)
  int64_t key;
  int32_t tok;
  int32_t k;
  bool operator<(const Elem& o) const { return key != o.key ? key < o.key : k < o.k; }
};

struct Result {
  bool keep = true;
  bool exact = true;
  double best = 0.0;
  uint64_t lcs = 0;
  std::vector<std::pair<double, uint32_t>> neighbours;  // (score, member)
};

double f_measure(int lcs, int la, int lb) {
  // rouge-score's _score_lcs with the candidate as prediction and the member as target.
  if (lcs == 0) return 0.0;
  double precision = static_cast<double>(lcs) / la;
  double recall = static_cast<double>(lcs) / lb;
  return 2 * precision * recall / (precision + recall);
}

// Per-thread working memory; the tables are indexed by token id and left zeroed after use.
struct Scratch {
  std::vector<uint64_t> mask;   // one-word patterns: the candidate's positions of each token
  std::vector<int32_t> slot;    // longer patterns: the row of each token in rows
  std::vector<uint64_t> rows;
  std::vector<uint64_t> state;
  std::vector<int32_t> count;   // occurrence counter for ordering elements
  std::vector<Elem> elems;
  int need[kSat + 1];           // per member length: the least overlap that can pass
  std::vector<uint32_t> hits;   // members whose bound passed (with repeats)
  std::vector<uint64_t> seen;   // a bit per pool member, zero between candidates
  int words = 0;
  const int32_t* pattern = nullptr;
  int la = 0;

  void grow(size_t members, size_t vocab) {
    if (seen.size() * 64 < members) seen.resize(members / 64 + 1, 0);
    if (mask.size() < vocab) {
      mask.resize(vocab, 0);
      slot.resize(vocab, 0);
      count.resize(vocab, 0);
    }
  }

  void load(const int32_t* a, int n) {
    pattern = a;
    la = n;
    words = (n + 63) / 64;
    if (words <= 1) {
      for (int i = 0; i < n; ++i) mask[a[i]] |= uint64_t{1} << i;
      return;
    }
    int rows_used = 1;  // row 0: no match
    for (int i = 0; i < n; ++i)
      if (slot[a[i]] == 0) slot[a[i]] = rows_used++;
    rows.assign(static_cast<size_t>(rows_used) * words, 0);
    for (int i = 0; i < n; ++i)
      rows[static_cast<size_t>(slot[a[i]]) * words + i / 64] |= uint64_t{1} << (i % 64);
    state.resize(words);
  }

  void unload() {
    for (int i = 0; i < la; ++i) {
      mask[pattern[i]] = 0;
      slot[pattern[i]] = 0;
    }
    la = 0;
  }

  // Length of the longest common subsequence of the loaded pattern and b (Hyyrö's
  // bit-parallel recurrence: one pass over b, one word operation per 64 pattern tokens).
  int lcs(const int32_t* b, int lb) {
    if (la == 0 || lb == 0) return 0;
    if (words == 1) {
      uint64_t s = ~uint64_t{0};
      for (int j = 0; j < lb; ++j) {
        uint64_t u = s & mask[b[j]];
        s = (s + u) | (s - u);
      }
      uint64_t used = la == 64 ? ~uint64_t{0} : (uint64_t{1} << la) - 1;
      return __builtin_popcountll(~s & used);
    }
    std::fill(state.begin(), state.end(), ~uint64_t{0});
    for (int j = 0; j < lb; ++j) {
      int32_t row = slot[b[j]];
      if (row == 0) continue;  // no match: the state is unchanged
      const uint64_t* m = &rows[static_cast<size_t>(row) * words];
      uint64_t carry = 0;
      for (int w = 0; w < words; ++w) {
        uint64_t s = state[w], u = s & m[w];
        uint64_t sum = s + u;
        uint64_t c1 = sum < s;
        sum += carry;
        carry = c1 | (sum < carry);
        state[w] = sum | (s - u);
      }
    }
    int total = 0;
    for (int w = 0; w < words; ++w) {
      uint64_t used = ~uint64_t{0};
      if (w == words - 1 && la % 64) used = (uint64_t{1} << (la % 64)) - 1;
      total += __builtin_popcountll(~state[w] & used);
    }
    return total;
  }
};

// Helper threads kept for the index's life. run() shares items among the caller and the
// helpers and returns when every item is done; it waits only for items a helper has taken, so a
// helper the OS has not scheduled yet (a busy machine) costs nothing.
class Workers {
 public:
  explicit Workers(int helpers) : wanted_(helpers) {}
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  ~Workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  // Calls body(thread, item) for every item in [0, n), thread 0 being the caller's.
  void run(size_t n, const std::function<void(size_t, size_t)>& body) {
    if (n > 1 && threads_.empty())
      for (int t = 1; t <= wanted_; ++t) threads_.emplace_back([this, t] { serve(t); });
    {
      std::lock_guard<std::mutex> lock(mu_);
      body_ = &body;
      items_ = n;
      next_ = 0;
      failed_ = false;
      ++generation_;
    }
    if (n > 1) wake_.notify_all();
    work(0, body, n);
    {
      std::unique_lock<std::mutex> lock(mu_);
      body_ = nullptr;  // helpers that have not joined in yet will not
      idle_.wait(lock, [this] { return busy_ == 0; });
    }
    if (failed_) throw std::bad_alloc();
  }

 private:
  void work(size_t t, const std::function<void(size_t, size_t)>& body, size_t n) {
    try {
      for (size_t c; !failed_ && (c = next_++) < n;) body(t, c);
    } catch (...) {
      failed_ = true;
    }
  }

  void serve(size_t t) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (body_ && generation_ != seen); });
      if (stop_) return;
      seen = generation_;
      ++busy_;
      const auto* body = body_;
      const size_t n = items_;
      lock.unlock();
      work(t, *body, n);
      lock.lock();
      if (--busy_ == 0) idle_.notify_all();
    }
  }

  const int wanted_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable wake_, idle_;
  const std::function<void(size_t, size_t)>* body_ = nullptr;
  size_t items_ = 0;
  uint64_t generation_ = 0;
  int busy_ = 0;
  bool stop_ = false;
  std::atomic<size_t> next_{0};
  std::atomic<bool> failed_{false};
};

class Index {
 public:
  Index(double tau, double floor, double threshold, bool keep_at_threshold, int max_neighbours,
        bool brute_force, int threads)
      : tau_(tau), floor_(floor), threshold_(threshold), keep_at_threshold_(keep_at_threshold),
        max_neighbours_(max_neighbours), brute_force_(brute_force),
        scratch_(std::max(1, threads)), workers_(std::max(1, threads) - 1) {}

  size_t size() const { return offsets_.size() - 1; }
  uint64_t lcs_computed() const { return lcs_computed_; }

  void add(const std::vector<int32_t>& toks) {
    see(toks);
    add_member(toks.data(), static_cast<int>(toks.size()));
  }

  std::vector<Result> check(const std::vector<std::vector<int32_t>>& batch, bool add) {
    for (const auto& toks : batch) see(toks);
    const size_t pool = size(), n = batch.size();
    std::vector<Result> out(n);
    std::vector<Summary> summaries(n);
    for (size_t c = 0; c < n; ++c) summaries[c] = summarise(batch[c].data(), batch[c].size());
    for (Scratch& sc : scratch_) sc.grow(pool, vocab_);
    // Against the pool: candidates in parallel, each scored by one thread.
    workers_.run(n, [&](size_t t, size_t c) {
      score_pool(scratch_[t], batch[c], summaries[c], pool, out[c]);
    });
    // Within the batch, in order: earlier kept candidates are pool members by now.
    Scratch& s = scratch_[0];
    std::vector<size_t> kept;
    for (size_t c = 0; c < n; ++c) {
      Result& r = out[c];
      const auto& a = batch[c];
      const int la = static_cast<int>(a.size());
      if (add && !kept.empty()) {
        s.load(a.data(), la);
        for (size_t k = 0; k < kept.size(); ++k) {
          const auto& b = batch[kept[k]];
          const int lb = static_cast<int>(b.size());
          if (!brute_force_ && !bound_passes(overlap_bound(summaries[c], summaries[kept[k]],
                                                           la, lb), la, lb))
            continue;
          record(r, static_cast<uint32_t>(pool + k), f_measure(s.lcs(b.data(), lb), la, lb));
        }
        s.unload();
      }
      finish(r, la, pool + kept.size());
      if (r.keep && add) kept.push_back(c);
    }
    for (size_t c : kept) add_member(batch[c].data(), static_cast<int>(batch[c].size()));
    for (const Result& r : out) lcs_computed_ += r.lcs;
    return out;
  }

  size_t memory_bytes() const {
    size_t total = tokens_.capacity() * sizeof(int32_t) + offsets_.capacity() * sizeof(uint64_t);
    total += rank_.capacity() * sizeof(int64_t) + common_bit_.capacity();
    total += postings_.capacity() * sizeof(postings_[0]);
    for (const auto& by_k : postings_) {
      total += by_k.capacity() * sizeof(by_k[0]);
      for (const Posting& p : by_k) total += p.entries.capacity() * sizeof(Entry);
    }
    for (const Scratch& s : scratch_) {
      total += s.hits.capacity() * 4 + s.seen.capacity() * 8 + s.mask.capacity() * 8;
      total += s.slot.capacity() * 4;
      total += s.count.capacity() * 4 + s.rows.capacity() * 8 + s.elems.capacity() * sizeof(Elem);
    }
    return total;
  }

 private:
  // The least overlap a sequence of this length needs with any partner to reach tau:
  // 2L/(la+lb) >= tau with lb >= L gives L >= tau*la/(2-tau).
  int required(int length) const {
    if (tau_ <= 0) return 1;
    return std::max(1, static_cast<int>(std::ceil(tau_ * length / (2 - tau_))));
  }

  int prefix(int length) const { return std::max(0, length - required(length) + 1); }

  bool bound_passes(int overlap, int la, int lb) const {
    return 2.0 * overlap / (la + lb) >= tau_;
  }

  // The least overlap for which bound_passes holds at these lengths, or kNever if none can.
  int needed(int la, int lb) const {
    const int most = std::min(la, lb);
    int o = std::max(0, static_cast<int>(std::ceil(tau_ * (la + lb) / 2)) - 2);
    while (o > 0 && bound_passes(o - 1, la, lb)) --o;
    while (o <= most && !bound_passes(o, la, lb)) ++o;
    return o <= most ? o : kNever;
  }

  // The member lengths lb for which an overlap of min(head, lb) passes: [lo, hi].
  struct Window {
    int lo, hi;
  };
  Window window(int la, int head) const {
    if (tau_ <= 0) return {0, INT32_MAX};
    int lo = std::max(1, static_cast<int>(tau_ * la / (2 - tau_)) - 1);
    while (lo > 1 && bound_passes(lo - 1, la, lo - 1)) --lo;
    while (lo <= head && !bound_passes(lo, la, lo)) ++lo;
    double top = std::min(2.0 * head / tau_ - la + 2, 1e9);
    int hi = std::max(head, static_cast<int>(top));
    while (hi < 1e9 && bound_passes(head, la, hi + 1)) ++hi;
    while (hi > head && !bound_passes(head, la, hi)) --hi;
    return {lo, hi};
  }

  // The overlap of two token multisets is at most their rare overlap plus their common one;
  // the common one is at most the shared common tokens plus the fewer repeats.
  static int overlap_bound(const Summary& x, const Summary& y, int lx, int ly) {
    int common = __builtin_popcountll(x.common & y.common) + std::min(x.repeats, y.repeats);
    return std::min(std::min(lx, ly), std::min(x.rare, y.rare) + common);
  }

  Summary summarise(const int32_t* toks, size_t n) const {
    Summary out;
    for (size_t i = 0; i < n; ++i) {
      const size_t t = static_cast<size_t>(toks[i]);
      const int bit = t < common_bit_.size() ? common_bit_[t] : -1;
      if (bit < 0) {
        ++out.rare;
      } else if (out.common >> bit & 1) {
        ++out.repeats;
      } else {
        out.common |= uint64_t{1} << bit;
      }
    }
    return out;
  }

  // Token occurrences in the global order: rarest first by the last re-ranking; tokens first
  // seen since then count as rarer than all, later-seen first. Any fixed order is correct;
  // in this one a list's rare occurrences come before its common ones.
  void elements(const int32_t* toks, int n, std::vector<int32_t>& count,
                std::vector<Elem>& out) const {
    out.clear();
    const int64_t ranked = static_cast<int64_t>(rank_.size());
    for (int i = 0; i < n; ++i) {
      int32_t t = toks[i];
      out.push_back({t < ranked ? rank_[t] : -1 - static_cast<int64_t>(t), t, count[t]++});
    }
    for (int i = 0; i < n; ++i) count[toks[i]] = 0;
    std::sort(out.begin(), out.end());
  }

  void see(const std::vector<int32_t>& toks) {
    for (int32_t t : toks) vocab_ = std::max(vocab_, static_cast<size_t>(t) + 1);
    if (count_.size() < vocab_) count_.resize(vocab_, 0);
  }

  void record(Result& r, uint32_t member, double f) {
    ++r.lcs;
    r.best = std::max(r.best, f);
    if (f >= floor_ && max_neighbours_ > 0) r.neighbours.emplace_back(f, member);
  }

  void finish(Result& r, int la, size_t pool) const {
    // rouge-score's rules: the paper keeps only if every score is < threshold; the original
    // code drops only when the max is > threshold.
    r.keep = keep_at_threshold_ ? !(r.best > threshold_) : !(r.best >= threshold_);
    r.exact = brute_force_ || r.best >= floor_ || tau_ <= 0 || la == 0 || pool == 0;
    auto by_score = [](const std::pair<double, uint32_t>& x, const std::pair<double, uint32_t>& y) {
      return x.first != y.first ? x.first > y.first : x.second < y.second;
    };
    auto& nb = r.neighbours;
    size_t keep = std::min(nb.size(), static_cast<size_t>(max_neighbours_));
    std::partial_sort(nb.begin(), nb.begin() + keep, nb.end(), by_score);
    nb.resize(keep);
  }

  const int32_t* member_tokens(size_t m) const { return tokens_.data() + offsets_[m]; }
  int member_length(size_t m) const { return static_cast<int>(offsets_[m + 1] - offsets_[m]); }

  void score_pool(Scratch& s, const std::vector<int32_t>& a, const Summary& x, size_t pool,
                  Result& r) {
    const int la = static_cast<int>(a.size());
    if (!brute_force_ && (la == 0 || pool == 0)) return;  // no token to probe with, no one to meet
    s.load(a.data(), la);
    if (brute_force_) {
      for (size_t m = 0; m < pool; ++m) {
        int lb = member_length(m);
        record(r, static_cast<uint32_t>(m), f_measure(s.lcs(member_tokens(m), lb), la, lb));
      }
      s.unload();
      return;
    }
    elements(a.data(), la, s.count, s.elems);
    const int probe = prefix(la);
    // The least overlap that passes, per member length below kSat: kNever outside the
    // widest window (at i = 0), where no entry can pass.
    const Window widest = window(la, la);
    std::fill(s.need, s.need + kSat + 1, kNever);
    for (int lb = widest.lo; lb <= std::min(widest.hi, kSat - 1); ++lb)
      s.need[lb] = needed(la, lb);
    size_t n = 0;  // entries passed so far (a member may pass more than once)
    for (int i = 0; i < probe; ++i) {
      const Elem& e = s.elems[i];
      if (static_cast<size_t>(e.tok) >= postings_.size()) continue;
      const auto& by_k = postings_[e.tok];
      if (static_cast<size_t>(e.k) >= by_k.size()) continue;
      // Bound at a pair's first match (i, p.pos): no match comes before it, so the overlap is
      // at most what follows it on each side; the rare matches follow it among the rare
      // occurrences, the common ones are bounded by the summaries. Every later match of the
      // pair has a smaller bound, so "some entry passes" is "the first entry passes": filter
      // entries one by one, then score each member once. The bound is at most min(head, lb),
      // so the lengths where that cannot pass (outside the window) are not even read.
      const int head = la - i, rare_head = x.rare - i;
      const Window w = window(la, head);
      auto passes = [&](const Entry& p, int lb, int need) {
        const int rare = std::max(0, std::min(rare_head, (p.rare == kSat ? lb : p.rare) - p.pos));
        const int common = __builtin_popcountll(x.common & p.common) +
                           std::min(x.repeats, p.repeats == kSat ? lb : p.repeats);
        return std::min(std::min(head, lb - p.pos), rare + common) >= need;
      };
      auto scan = [&](const Entry* from, const Entry* to) {  // branch-free but for kSat
        if (s.hits.size() < n + (to - from)) s.hits.resize(2 * (n + (to - from)));
        uint32_t* hits = s.hits.data();
        for (const Entry* p = from; p < to; ++p) {
          if (p->len == kSat) {  // a long member: its length from the offsets
            const int lb = member_length(p->member);
            if (lb <= w.hi && passes(*p, lb, needed(la, lb))) hits[n++] = p->member;
            continue;
          }
          hits[n] = p->member;
          n += passes(*p, p->len, s.need[p->len]);
        }
      };
      const Posting& posting = by_k[e.k];
      const Entry* begin = posting.entries.data();
      const Entry* sorted_end = begin + posting.sorted;
      auto shorter = [](const Entry& q, int len) { return q.len < len; };
      const Entry* p = std::lower_bound(begin, sorted_end, std::min(w.lo, int{kSat}), shorter);
      const Entry* to = w.hi >= kSat ? sorted_end
                                     : std::lower_bound(p, sorted_end, w.hi + 1, shorter);
      while (p < to) {  // one run of a length at a time
        const Entry* end = run_end(p, to);
        if (p->len == kSat) {
          scan(p, end);  // long members, each checked in full
        } else {
          // Past this position an entry leaves fewer than need[len] tokens after its match.
          const int last = p->len - s.need[p->len];
          scan(p, std::upper_bound(p, end, last, [](int pos, const Entry& q) {
                 return pos < q.pos;
               }));
        }
        p = end;
      }
      scan(sorted_end, begin + posting.entries.size());
    }
    // Each member once, in member order (a bitmap of the pool, small enough for the cache),
    // its tokens fetched ahead: in a large pool the scores are bound by memory latency.
    uint32_t* hits = s.hits.data();
    for (size_t k = 0; k < n; ++k) s.seen[hits[k] >> 6] |= uint64_t{1} << (hits[k] & 63);
    size_t unique = 0;
    for (size_t w = 0, words = (pool + 63) / 64; w < words; ++w) {
      for (uint64_t bits = s.seen[w]; bits; bits &= bits - 1)
        hits[unique++] = static_cast<uint32_t>(w * 64 + __builtin_ctzll(bits));
      s.seen[w] = 0;
    }
    for (size_t k = 0; k < unique; ++k) {
      if (k + 16 < unique) __builtin_prefetch(&offsets_[hits[k + 16]]);
      if (k + 8 < unique) __builtin_prefetch(member_tokens(hits[k + 8]));
      const uint32_t m = hits[k];
      const int lb = member_length(m);
      record(r, m, f_measure(s.lcs(member_tokens(m), lb), la, lb));
    }
    s.unload();
  }

  void add_member(const int32_t* toks, int n) {
    const size_t m = size();
    if (m >= UINT32_MAX) throw std::length_error("ROUGE-L index is full (2^32 members)");
    tokens_.insert(tokens_.end(), toks, toks + n);
    offsets_.push_back(tokens_.size());
    if (brute_force_) return;
    if (size() >= next_reindex_) {
      next_reindex_ *= 4;
      reindex();
    } else {
      post(m);
    }
  }

  void post(size_t m) {
    const int n = member_length(m);
    elements(member_tokens(m), n, count_, elems_);
    const Summary sum = summarise(member_tokens(m), n);
    auto small = [](int v) { return static_cast<uint8_t>(std::min<int>(v, kSat)); };
    Entry entry{static_cast<uint32_t>(m), small(n), 0, small(sum.rare), small(sum.repeats),
                sum.common};
    const int indexed = prefix(n);
    for (int j = 0; j < indexed; ++j) {
      const Elem& e = elems_[j];
      if (postings_.size() <= static_cast<size_t>(e.tok)) postings_.resize(e.tok + 1);
      auto& by_k = postings_[e.tok];
      if (by_k.size() <= static_cast<size_t>(e.k)) by_k.resize(e.k + 1);
      entry.pos = static_cast<uint8_t>(std::min(j, 0xFF));
      by_k[e.k].append(entry);
    }
  }

  // Re-rank tokens by document frequency in the pool (rarest first; the most frequent
  // kCommon are the common ones) and rebuild the postings in member order. Done at geometric
  // pool sizes, so amortised linear.
  void reindex() {
    std::vector<uint32_t> df(vocab_, 0), last(vocab_, UINT32_MAX);
    for (size_t m = 0; m < size(); ++m) {
      const int32_t* t = member_tokens(m);
      for (int i = 0, n = member_length(m); i < n; ++i)
        if (last[t[i]] != m) {
          last[t[i]] = static_cast<uint32_t>(m);
          ++df[t[i]];
        }
    }
    std::vector<int32_t> order(vocab_);
    for (size_t t = 0; t < vocab_; ++t) order[t] = static_cast<int32_t>(t);
    std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
      return df[x] != df[y] ? df[x] < df[y] : x > y;
    });
    rank_.assign(vocab_, 0);
    common_bit_.assign(vocab_, -1);
    for (size_t position = 0; position < vocab_; ++position) {
      rank_[order[position]] = static_cast<int64_t>(position);
      const size_t from_top = vocab_ - 1 - position;
      if (from_top < static_cast<size_t>(kCommon) && df[order[position]] > 0)
        common_bit_[order[position]] = static_cast<int8_t>(from_top);
    }
    postings_.clear();
    postings_.shrink_to_fit();
    for (size_t m = 0; m < size(); ++m) post(m);
    for (auto& by_k : postings_)
      for (Posting& p : by_k) {
        p.sorted = 0;
        p.sort_tail();
      }
  }

  const double tau_, floor_, threshold_;
  const bool keep_at_threshold_;
  const int max_neighbours_;
  const bool brute_force_;
  std::vector<Scratch> scratch_;  // one per thread
  Workers workers_;
  std::vector<int32_t> tokens_;
  std::vector<uint64_t> offsets_{0};
  std::vector<int64_t> rank_;
  std::vector<int8_t> common_bit_;
  std::vector<std::vector<Posting>> postings_;  // [token][occurrence]
  std::vector<int32_t> count_;
  std::vector<Elem> elems_;
  size_t vocab_ = 0;
  size_t next_reindex_ = 1024;
  uint64_t lcs_computed_ = 0;
};

// -- Python binding ---------------------------------------------------------------------------

struct IndexObject {
  PyObject_HEAD
  Index* index;
  bool busy;  // the GIL is released while scoring: refuse re-entry from another thread
};

bool to_tokens(PyObject* seq, std::vector<int32_t>& out) {
  PyObject* fast = PySequence_Fast(seq, "token ids must be a sequence of ints");
  if (!fast) return false;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  PyObject** items = PySequence_Fast_ITEMS(fast);
  out.resize(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    long v = PyLong_AsLong(items[i]);
    if (v == -1 && PyErr_Occurred()) {
      Py_DECREF(fast);
      return false;
    }
    if (v < 0 || v >= INT32_MAX) {
      Py_DECREF(fast);
      PyErr_Format(PyExc_ValueError, "token id %ld is out of range [0, 2^31-1)", v);
      return false;
    }
    out[i] = static_cast<int32_t>(v);
  }
  Py_DECREF(fast);
  return true;
}

bool enter(IndexObject* self) {
  if (!self->index) {
    PyErr_SetString(PyExc_RuntimeError, "Index is not initialised");
    return false;
  }
  if (self->busy) {
    PyErr_SetString(PyExc_RuntimeError, "Index is in use by another thread");
    return false;
  }
  self->busy = true;
  return true;
}

int Index_init(IndexObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"tau", "floor", "threshold", "keep_at_threshold", "max_neighbours",
                             "brute_force", "threads", nullptr};
  double tau, floor, threshold;
  int keep_at_threshold, brute_force, max_neighbours, threads;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "dddpipi", const_cast<char**>(kw), &tau, &floor,
                                   &threshold, &keep_at_threshold, &max_neighbours, &brute_force,
                                   &threads))
    return -1;
  if (max_neighbours < 0 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "max_neighbours must be >= 0 and threads >= 1");
    return -1;
  }
  delete self->index;
  self->index = new (std::nothrow)
      Index(tau, floor, threshold, keep_at_threshold, max_neighbours, brute_force, threads);
  if (!self->index) {
    PyErr_NoMemory();
    return -1;
  }
  self->busy = false;
  return 0;
}

void Index_dealloc(IndexObject* self) {
  delete self->index;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* Index_add(IndexObject* self, PyObject* tokens) {
  std::vector<int32_t> toks;
  if (!to_tokens(tokens, toks) || !enter(self)) return nullptr;
  try {
    self->index->add(toks);
  } catch (const std::bad_alloc&) {
    self->busy = false;
    return PyErr_NoMemory();
  } catch (const std::exception& exc) {
    self->busy = false;
    PyErr_SetString(PyExc_RuntimeError, exc.what());
    return nullptr;
  }
  self->busy = false;
  Py_RETURN_NONE;
}

PyObject* result_tuple(const Result& r) {
  PyObject* nb = PyTuple_New(static_cast<Py_ssize_t>(r.neighbours.size()));
  if (!nb) return nullptr;
  for (size_t i = 0; i < r.neighbours.size(); ++i) {
    PyObject* pair = Py_BuildValue("(kd)", static_cast<unsigned long>(r.neighbours[i].second),
                                   r.neighbours[i].first);
    if (!pair) {
      Py_DECREF(nb);
      return nullptr;
    }
    PyTuple_SET_ITEM(nb, static_cast<Py_ssize_t>(i), pair);
  }
  return Py_BuildValue("(NdNKN)", PyBool_FromLong(r.keep), r.best, PyBool_FromLong(r.exact),
                       static_cast<unsigned long long>(r.lcs), nb);
}

PyObject* Index_check(IndexObject* self, PyObject* args) {
  PyObject* items;
  int add;
  if (!PyArg_ParseTuple(args, "Op", &items, &add)) return nullptr;
  PyObject* fast = PySequence_Fast(items, "check() takes a sequence of token-id sequences");
  if (!fast) return nullptr;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  std::vector<std::vector<int32_t>> batch(n);
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!to_tokens(PySequence_Fast_GET_ITEM(fast, i), batch[i])) {
      Py_DECREF(fast);
      return nullptr;
    }
  Py_DECREF(fast);
  if (!enter(self)) return nullptr;
  std::vector<Result> results;
  bool failed = false;
  Py_BEGIN_ALLOW_THREADS
  try {
    results = self->index->check(batch, add);
  } catch (...) {
    failed = true;
  }
  Py_END_ALLOW_THREADS
  self->busy = false;
  if (failed) return PyErr_NoMemory();
  PyObject* out = PyList_New(n);
  if (!out) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = result_tuple(results[i]);
    if (!item) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, i, item);
  }
  return out;
}

PyObject* Index_memory_bytes(IndexObject* self, PyObject*) {
  if (!self->index) return PyLong_FromLong(0);
  return PyLong_FromSize_t(self->index->memory_bytes());
}

PyObject* Index_lcs_computed(IndexObject* self, void*) {
  return PyLong_FromUnsignedLongLong(self->index ? self->index->lcs_computed() : 0);
}

Py_ssize_t Index_len(IndexObject* self) {
  return self->index ? static_cast<Py_ssize_t>(self->index->size()) : 0;
}

PyMethodDef Index_methods[] = {
    {"add", reinterpret_cast<PyCFunction>(Index_add), METH_O,
     "add(tokens): append a member (token ids) unconditionally."},
    {"check", reinterpret_cast<PyCFunction>(Index_check), METH_VARARGS,
     "check(batch, add) -> [(keep, max, max_exact, lcs_computed, ((member, score), ...))]: "
     "decide token-id lists in order, as a one-at-a-time greedy pass would."},
    {"memory_bytes", reinterpret_cast<PyCFunction>(Index_memory_bytes), METH_NOARGS,
     "Bytes held by the index's arrays."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef Index_getset[] = {
    {"lcs_computed", reinterpret_cast<getter>(Index_lcs_computed), nullptr,
     "Exact LCS computations so far.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PySequenceMethods Index_as_sequence = {};

PyTypeObject IndexType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_selfinstruct_rouge",
                          "The ROUGE-L index's compiled kernel (see actors/method/dedup_index.py).", -1,
                          nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__selfinstruct_rouge(void) {
  Index_as_sequence.sq_length = reinterpret_cast<lenfunc>(Index_len);
  IndexType.tp_name = "_selfinstruct_rouge.Index";
  IndexType.tp_basicsize = sizeof(IndexObject);
  IndexType.tp_flags = Py_TPFLAGS_DEFAULT;
  IndexType.tp_doc = "Greedy ROUGE-L state over token ids: postings, bounds and exact LCS.";
  IndexType.tp_new = PyType_GenericNew;
  IndexType.tp_init = reinterpret_cast<initproc>(Index_init);
  IndexType.tp_dealloc = reinterpret_cast<destructor>(Index_dealloc);
  IndexType.tp_methods = Index_methods;
  IndexType.tp_getset = Index_getset;
  IndexType.tp_as_sequence = &Index_as_sequence;
  if (PyType_Ready(&IndexType) < 0) return nullptr;
  PyObject* module = PyModule_Create(&module_def);
  if (!module) return nullptr;
  Py_INCREF(&IndexType);
  if (PyModule_AddObject(module, "Index", reinterpret_cast<PyObject*>(&IndexType)) < 0) {
    Py_DECREF(&IndexType);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
