// End-to-end tests of `squat quant` (runs the built binary on .npy files written here) and of
// the .npy reader/writer.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/npy.h"
#include "squat/kv_quant.h"

using namespace squat;

namespace {

std::string dir() { return ::testing::TempDir() + "squat_quant_tool_"; }

void write_bytes(const std::string& path, const std::vector<unsigned char>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

struct Result {
  int status;
  std::string out;
};

Result run(const std::string& args) {
  const std::string log = dir() + "log.txt";
  const std::string cmd =
      std::string(SQUAT_BINARY_DIR) + "/squat quant " + args + " > " + log + " 2>&1";
  const int raw = std::system(cmd.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, read_text(log)};
}

std::vector<float> randn(std::size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

double metric(const std::string& out, const std::string& label) {
  const std::size_t p = out.find(label);
  if (p == std::string::npos) return NAN;
  return std::stod(out.substr(p + label.size()));
}

}  // namespace

TEST(Npy, RoundTripAndRejections) {
  const std::vector<float> x{1.0f, -2.5f, 3.25f, 0.0f, 5.0f, 6.0f};
  const auto bytes = npy::encode_f32(x.data(), {2, 3});
  npy::Array a = npy::parse(bytes, "mem");
  EXPECT_EQ(a.dtype, "<f4");
  EXPECT_EQ(a.shape, (std::vector<std::size_t>{2, 3}));
  EXPECT_EQ(a.data, x);
  EXPECT_EQ((bytes.size() - x.size() * 4) % 64, 0u);  // header padded to 64 bytes
  std::vector<unsigned short> h;
  for (float v : x) h.push_back(float_to_fp16(v));
  npy::Array b = npy::parse(npy::encode_f16(h.data(), {6}), "mem16");
  EXPECT_EQ(b.shape, (std::vector<std::size_t>{6}));
  EXPECT_EQ(b.data, x);
  auto bad = [](std::vector<unsigned char> v, const char* what) {
    EXPECT_THROW(npy::parse(v, "bad.npy"), Error) << what;
  };
  bad({}, "empty");
  bad(std::vector<unsigned char>(bytes.begin(), bytes.end() - 1), "truncated data");
  bad(std::vector<unsigned char>(bytes.begin(), bytes.begin() + 20), "truncated header");
  std::vector<unsigned char> f8 = bytes;
  const std::string hdr(f8.begin(), f8.begin() + 64);
  f8[hdr.find("<f4") + 2] = '8';
  bad(f8, "float64");
  std::vector<unsigned char> fortran = bytes;
  const std::size_t fp = hdr.find("False");
  const std::string tr = "True ";
  std::copy(tr.begin(), tr.end(), fortran.begin() + std::ptrdiff_t(fp));
  bad(fortran, "fortran order");
}

TEST(QuantTool, KiviAndSquatEndToEnd) {
  const std::size_t n = 64, d = 64, rows = 96;
  std::vector<float> k = randn(n * d, 1), q(rows * d, 0.0f);
  for (std::size_t i = 0; i < k.size(); i += 9) k[i] *= 6.0f;
  const std::vector<float> dirs = randn(2 * d, 2), w = randn(rows * 2, 3);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t c = 0; c < d; ++c)
      q[i * d + c] = w[2 * i] * dirs[c] + w[2 * i + 1] * dirs[d + c];
  write_bytes(dir() + "k.npy", npy::encode_f32(k.data(), {n, d}));
  write_bytes(dir() + "q.npy", npy::encode_f32(q.data(), {rows, d}));

  const std::string common = " --keys " + dir() + "k.npy --queries " + dir() +
                             "q.npy --bits 2 --group-size 32 --quant-group-size 16 --subspace-dim "
                             "20 --lambda 0.01 --key-quant per-channel";
  std::remove((dir() + "kivi.npy").c_str());
  Result kivi = run("--method kivi" + common + " --out " + dir() + "kivi.npy");
  ASSERT_EQ(kivi.status, 0) << kivi.out;
  Result sq = run("--method squat" + common + " --out " + dir() + "squat.npy");
  ASSERT_EQ(sq.status, 0) << sq.out;
  // The written array is the library's dequantized KIVI chunk.
  npy::Array out = npy::read(dir() + "kivi.npy");
  EXPECT_EQ(out.shape, (std::vector<std::size_t>{n, d}));
  const kv::QuantizedChunk c =
      kv::quantize_chunk(k.data(), n, d, 2, 32, kv::GroupLayout::PerChannel, kv::ParamType::F16);
  std::vector<float> expect(n * d);
  kv::dequantize_chunk(c, expect.data());
  EXPECT_EQ(out.data, expect);
  // 2-bit codes + fp16 scale and min per 32-element group = 2 + 32/32 = 3 bits.
  EXPECT_DOUBLE_EQ(metric(kivi.out, "bits per element: "), 3.0);
  double se = 0, num = 0, den = 0;
  for (std::size_t i = 0; i < k.size(); ++i)
    se += (double(expect[i]) - k[i]) * (double(expect[i]) - k[i]);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t t = 0; t < n; ++t) {
      double a = 0, e = 0;
      for (std::size_t x = 0; x < d; ++x) {
        a += double(q[i * d + x]) * k[t * d + x];
        e += double(q[i * d + x]) * (double(expect[t * d + x]) - k[t * d + x]);
      }
      num += e * e;
      den += a * a;
    }
  EXPECT_NEAR(metric(kivi.out, "key mse: "), se / double(n * d), 1e-6 * se / double(n * d));
  EXPECT_NEAR(metric(kivi.out, "relative logit error: "), std::sqrt(num / den), 1e-5);
  EXPECT_LT(metric(sq.out, "relative logit error: "), metric(kivi.out, "relative logit error: "));

  // float16 input and per-token values work too.
  std::vector<unsigned short> h;
  for (float v : k) h.push_back(float_to_fp16(v));
  write_bytes(dir() + "k16.npy", npy::encode_f16(h.data(), {n, d}));
  Result v = run("--keys " + dir() +
                 "k16.npy --method kivi --bits 4 --group-size 32 --tensor values --out " + dir() +
                 "v.npy");
  EXPECT_EQ(v.status, 0) << v.out;
  EXPECT_NE(v.out.find("value mse"), std::string::npos) << v.out;
}

TEST(QuantTool, RejectsBadInputWithoutWritingOutput) {
  const std::size_t n = 64, d = 64;
  const std::vector<float> k = randn(n * d, 5);
  write_bytes(dir() + "ok.npy", npy::encode_f32(k.data(), {n, d}));
  write_bytes(dir() + "garbage.npy", {'h', 'e', 'l', 'l', 'o'});
  auto f8 = npy::encode_f32(k.data(), {n, d});
  f8[std::string(f8.begin(), f8.begin() + 64).find("<f4") + 2] = '8';
  write_bytes(dir() + "f8.npy", f8);
  write_bytes(dir() + "3d.npy", npy::encode_f32(k.data(), {4, 16, 64}));
  std::vector<float> nan = k;
  nan[77] = NAN;
  write_bytes(dir() + "nan.npy", npy::encode_f32(nan.data(), {n, d}));
  std::vector<float> inf = k;
  inf[5] = -INFINITY;
  write_bytes(dir() + "inf.npy", npy::encode_f32(inf.data(), {n, d}));
  write_bytes(dir() + "odd.npy", npy::encode_f32(k.data(), {40, 64}));
  write_bytes(dir() + "q48.npy", npy::encode_f32(k.data(), {64, 48}));

  struct Case {
    std::string args;
    int status;
  };
  const std::string out = dir() + "never.npy";
  const std::vector<Case> cases{
      {"--keys " + dir() + "garbage.npy --method kivi", 1},
      {"--keys " + dir() + "missing.npy --method kivi", 1},
      {"--keys " + dir() + "f8.npy --method kivi", 1},
      {"--keys " + dir() + "3d.npy --method kivi", 1},
      {"--keys " + dir() + "nan.npy --method kivi", 1},
      {"--keys " + dir() + "inf.npy --method kivi", 1},
      {"--keys " + dir() + "ok.npy --method kivi --bits 3", 2},
      {"--keys " + dir() + "ok.npy --method kivi --key-quant diagonal", 2},
      {"--keys " + dir() + "ok.npy --method squat --queries " + dir() +
           "ok.npy --quant-group-size 48",
       2},
      {"--keys " + dir() + "odd.npy --method kivi --group-size 32", 2},
      {"--keys " + dir() + "ok.npy --method kivi --key-quant per-token --group-size 48", 2},
      {"--keys " + dir() + "ok.npy --method squat", 2},
      {"--keys " + dir() + "ok.npy --method squat --queries " + dir() + "q48.npy", 1},
      {"--keys " + dir() + "ok.npy --method squat --queries " + dir() + "nan.npy", 1},
  };
  for (const Case& c : cases) {
    std::remove(out.c_str());
    Result r = run(c.args + " --out " + out);
    EXPECT_EQ(r.status, c.status) << c.args << "\n" << r.out;
    EXPECT_FALSE(exists(out)) << c.args;
    EXPECT_FALSE(exists(out + ".partial")) << c.args;  // core/files.h's temporary name
    EXPECT_FALSE(r.out.empty()) << c.args;             // a message says what is wrong
  }
}
