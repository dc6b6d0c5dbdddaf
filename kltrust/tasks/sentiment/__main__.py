"""``python -m kltrust.tasks.sentiment``: the speed of the gold reward (`gold.benchmark`)."""

from kltrust.tasks.sentiment.gold import benchmark

if __name__ == "__main__":
    rate = benchmark()
    print(f"VADER compound: {rate:,.0f} sentences/s; 1,024 responses in {1024 / rate * 1e3:.0f} ms")
