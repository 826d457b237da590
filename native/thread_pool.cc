#include "thread_pool.h"

#include <utility>

namespace vmseal {

ThreadPool::ThreadPool(size_t threads) : target_(threads < 1 ? 1 : threads) {}

ThreadPool::~ThreadPool() { Shutdown(); }

size_t ThreadPool::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return target_;
}

// Workers are started on first use so that loading the addon (or only using the sync API) costs
// no threads.
void ThreadPool::StartWorkersLocked() {
  while (workers_.size() < target_) {
    size_t index = workers_.size();
    workers_.emplace_back([this, index] { WorkerLoop(index); });
  }
}

bool ThreadPool::Submit(std::vector<Task> tasks) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    StartWorkersLocked();
    for (Task& t : tasks) queue_.push_back(std::move(t));
  }
  cv_.notify_all();
  return true;
}

void ThreadPool::Resize(size_t threads) {
  if (threads < 1) threads = 1;
  std::vector<std::thread> surplus;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    target_ = threads;
    if (workers_.empty()) return;  // not started yet: the new size applies at first use
    if (workers_.size() < target_) {
      StartWorkersLocked();
    } else {
      while (workers_.size() > target_) {
        surplus.push_back(std::move(workers_.back()));
        workers_.pop_back();
      }
    }
  }
  cv_.notify_all();
  for (std::thread& t : surplus) t.join();
}

void ThreadPool::WorkerLoop(size_t index) {
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || index >= target_ || !queue_.empty(); });
      if (stopping_ || index >= target_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task(false);
  }
}

void ThreadPool::Shutdown() {
  std::vector<std::thread> workers;
  std::deque<Task> leftover;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    workers.swap(workers_);
  }
  cv_.notify_all();
  for (std::thread& t : workers) t.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    leftover.swap(queue_);
  }
  for (Task& t : leftover) t(true);
}

}  // namespace vmseal
