// Summary statistics shared by the measuring commands (bench, perplexity, eval).
#pragma once

#include <utility>
#include <vector>

namespace squat::apps {

// Arithmetic mean; 0 for no values.
double mean(const std::vector<double>& values);

// Standard error of the mean: sample standard deviation (n - 1) over sqrt(n); 0 for n < 2.
double stderr_of_mean(const std::vector<double>& values);

// Middle value, or the mean of the two middle values for an even count; 0 for no values.
double median(std::vector<double> values);

// Nearest-rank percentile (p in [0, 100]): the smallest value with at least p% of the values
// at or below it; 0 for no values.
double percentile(std::vector<double> values, double p);

// 95% Wilson score interval of a proportion of k successes in n trials; [0, 1] for n = 0.
std::pair<double, double> wilson_interval(long k, long n);

}  // namespace squat::apps
