"""Model families that interprune builds itself (the rest come from torchvision)."""
